"""The review page: a person sees what is doubtful about images and decides, one click each.

One page component (:mod:`imgclf.review.component` and ``static/review.html``)
over a :class:`~imgclf.review.items.ReviewSource`; two sources use it:
:mod:`imgclf.review.data_source` (``imgclf review DATA``: inspect's findings and
a run's likely label errors, decided into a corrections file) and
:mod:`imgclf.review.queue_source` (the doubtful predictions of a served model,
decided into a labels CSV for ``update --add``).
"""
