"""Watching a deployed model: the prediction log, drift and novelty against the training reference, the review queue.

``schema`` declares the database (a ``predictions`` table and its
migrations, SQLite or PostgreSQL through SQLAlchemy Core); ``records`` turns
an answer into a row; ``images`` keeps copies of the logged images;
``writer`` is the one thread that writes, fed by a bounded queue, so a
request never waits for the database; ``log`` is what serve and predict
hold; ``queue`` reads the doubtful predictions and records a reviewer's
decisions. ``reference`` is what training stores for comparison (training
and val embeddings, the model's head, val's novelty scores, the drift test's
settings); ``novelty`` the novelty score; ``drift`` the tests;
``monitor`` and ``logged`` the windows of a log; ``live`` serve's gauges.
"""
