"""MLflow tracking of searches, retrains and verify runs, all logged from the driver (trials never
talk to MLflow). `store` resolves and checks the tracking URI and opens the store; `runs` holds
the run tags and finds a search's parent and trial runs; `callback` logs one child run per Tune
trial; `hooks` plugs tracking into tuner.search (flags, checks, parent run, artifacts);
`artifacts` draws the end-of-search tables and plots; `ui` starts `run_search.py ui` and says
where to look. Import the module you need: this package re-exports nothing.
"""
