"""Data: the seed layout's metadata, the decoded-image cache, importers, the 61-class taxonomy and the demo dataset."""
