"""The moderators' review queue: the queue itself, accounts, label export and the web page.

Everything that reads or changes the review tables lives in this package; the
worker only inserts new items, beside their verdicts (`worker.persistence`).
One module a job:

- `items`: the records moderators see, and every read (item, history, list, stats).
- `queue`: claims with leases, renewals, releases, expiries and decisions.
- `accounts`: moderator accounts, their Argon2id hashes and sign-in checks.
- `labels`: decisions exported as labelled data for calibration.
- `commands`: `itmguard review …` in a terminal.
- `web`, `sessions`, `signin`, `rendering`: the web page, its signed sessions,
  signing in and out, and its templates (in `templates/`, with `static/`).

Nothing is imported here, so loading `worker.review.commands` to list the CLI
stays cheap.
"""
