"""A model's life after training: update it with new photos or classes, judge the update, record where it came from.

``update`` (a run plus new data to a new run), ``gate`` (the per-class
regression check an update must pass), ``manifest`` (the images a run saw,
with content hashes), ``lineage`` (a bundle's parent, added data and
verdict), ``diff`` (two runs' data and per-class figures compared).
"""
