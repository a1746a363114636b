"""croptune's performance benchmark (figures P1-P6, T1-T2, G1-G2): `python -m bench --help`."""
