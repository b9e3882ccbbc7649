"""A model's life after training: update it with new photos or classes, judge the update, record where it came from,
and promote it to be the version a server answers with.

``update`` (a run plus new data to a new run), ``gate`` (the per-class
regression check an update must pass), ``manifest`` (the images a run saw,
with content hashes), ``lineage`` (a bundle's parent, added data and
verdict), ``diff`` (two runs' data and per-class figures compared),
``model_folder`` (the versions of a model and its ``current`` pointer) and
``promotion`` (promote, rollback, versions).
"""
