"""The moderators' review queue: the queue itself, accounts, label export and the web page.

Everything that reads or changes the review tables lives in this package; the
worker only inserts new items, beside their verdicts (`worker.persistence`).
One module a job:

- `items`: the records moderators see, and every read (item, history, list, stats).
- `queue`: claims with leases, renewals, releases, expiries and decisions.
- `decisions`: what a decision leaves behind (its row, the second-opinion draw, its
  message in the outbox for the decisions topic), and undo.
- `ledger`: the audit row every step appends.
- `triage`: which part of the queue to work, and an item's context (other
  verdicts on its post, its author's recent flags).
- `figures`: second-opinion agreement, reasons, each moderator's pace.
- `wellness`: each moderator's blur and greyscale for pictures.
- `origin`: where an audited step came from (web page, or CLI and its user).
- `accounts`: moderator accounts, their Argon2id hashes, sign-in checks and
  session generations.
- `throttle`: sign-in backoff and lockout, kept in Postgres.
- `labels`: decisions exported as labelled data for calibration.
- `display`: how captions and scores are shown (hidden characters marked).
- `commands`: `itmguard review …` in a terminal.
- `web`, `pages`, `routing`, `inputs`, `middleware`, `sessions`, `signin`,
  `rendering`: the web page (the queue's routes, and undo, stats and display
  settings), what its handlers share, what it accepts from a request, its
  headers and error pages, its signed sessions, signing in and out, and its
  templates (in `templates/`, with `static/`).

Nothing is imported here, so loading `worker.review.commands` to list the CLI
stays cheap.
"""
