"""`itmguard compare`: two models' verdicts on the same posts, side by side.

Before a new model replaces the one in service, it scores the same traffic in
shadow and its verdicts are stored under its own model id; this package sets
those verdicts against the current model's and against moderators' decisions,
so whoever promotes the new model sees what would change. `queries` reads the
database, `summary` computes the figures from plain rows, `plots` draws the
PNGs, `report` writes the HTML page and the JSON summary, and `commands` is the
command line. `since` parses the `--since` time that `itmguard review
export-labels` shares.
"""
