"""How the commands show their results: Rich tables and summaries, apart from the commands' declarations."""

TABLE_LIMIT = 20  # most rows a table shows: trials of a study; up to this many images, predict prints tables
