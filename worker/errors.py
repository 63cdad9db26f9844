"""The one exception tree of itmguard.

Callers catch these classes only; foreign errors (SQLAlchemy, ONNX Runtime,
Pillow, jsonschema) are translated at the edge that meets them.

    ItmguardError
    ├── ConfigError                 a setting has a bad value; the process stops
    ├── CalibrationError            too few labelled posts of a class, or an unreachable target
    ├── ExportError                 a checkpoint cannot become a bundle that scores as it does
    ├── BundleError                 the model bundle cannot be used
    │   ├── BundleFieldError        bundle.json lacks a field or has a bad value
    │   ├── BundleFileMissing       model.onnx, tokenizer.json or bundle.json absent
    │   ├── BundleHashMismatch      model.onnx is not the file bundle.json describes
    │   └── WarmupFailed            the model failed the start-up batch at its production shape
    ├── InputError                  one post cannot be scored; it gets an `error` verdict
    │   ├── InvalidJson             the payload is not UTF-8 JSON
    │   ├── InvalidEvent            the JSON breaks the post-event schema
    │   ├── ImageTooLarge           encoded image over the byte limit
    │   ├── ImageTooManyPixels      decoded size over the pixel limit (decompression bomb)
    │   ├── ImageDecodeFailed       bytes are not a decodable image
    │   ├── ImageUrlForbidden       bad scheme, or the host is a private/loopback/... address
    │   ├── ImageFetchTimeout       the image server did not answer in time
    │   ├── ImageFetchFailed        HTTP error status, refused connection, too many redirects
    │   ├── ImageTypeRefused        the server's content type is not an image type we decode
    │   └── InferenceFailed         the model raised on this post alone
    ├── ReviewError                 a review-queue action cannot be done as asked; says why
    │   ├── ItemNotFound            no review item has that id
    │   ├── ItemNotClaimed          the moderator does not hold the item (claim it first)
    │   │   └── LeaseExpired        the moderator's lease ran out before the action
    │   ├── ItemHeldByOther         another moderator holds a live lease on the item
    │   ├── ItemAlreadyDecided      the item has its decision; decisions are final
    │   ├── OwnSecondOpinion        a second opinion must come from another moderator
    │   ├── UndoRefused             not the moderator's decision, or its undo window has passed
    │   ├── UnknownModerator        no enabled moderator account has that name
    │   └── ModeratorExists         an account with that name already exists
    └── InfraError                  something outside the post failed; retried, never dead-lettered
        ├── DatabaseUnavailable
        ├── DatabaseNotMigrated     schema not at this release's head; run `itmguard db upgrade`
        ├── BrokerUnavailable
        └── BatchAbandoned          still failing when the shutdown grace ran out

Each `InputError` carries a stable `code`: it becomes the verdict's
`error_code` and the dead-letter message's `reason`.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "BatchAbandoned",
    "BrokerUnavailable",
    "BundleError",
    "BundleFieldError",
    "BundleFileMissing",
    "BundleHashMismatch",
    "CalibrationError",
    "ConfigError",
    "DatabaseNotMigrated",
    "DatabaseUnavailable",
    "ExportError",
    "ImageDecodeFailed",
    "ImageFetchFailed",
    "ImageFetchTimeout",
    "ImageTooLarge",
    "ImageTooManyPixels",
    "ImageTypeRefused",
    "ImageUrlForbidden",
    "InferenceFailed",
    "InfraError",
    "InputError",
    "InvalidEvent",
    "InvalidJson",
    "ItemAlreadyDecided",
    "ItemHeldByOther",
    "ItemNotClaimed",
    "ItemNotFound",
    "ItmguardError",
    "LeaseExpired",
    "ModeratorExists",
    "OwnSecondOpinion",
    "ReviewError",
    "UndoRefused",
    "UnknownModerator",
    "WarmupFailed",
]


class ItmguardError(Exception):
    """Root of every error itmguard raises on purpose."""


class ConfigError(ItmguardError):
    """A setting has a bad value."""

    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting = setting
        self.value = value
        self.reason = reason
        super().__init__(f"{setting}={value!r}: {reason}")


class ExportError(ItmguardError):
    """A checkpoint cannot be exported, or its bundle does not score as the checkpoint does."""

    def __init__(self, checkpoint: str, message: str) -> None:
        self.checkpoint = checkpoint
        super().__init__(f"cannot export {checkpoint}: {message}")


class CalibrationError(ItmguardError):
    """The labelled set cannot calibrate the bundle: too few of a class, or a target out of
    reach."""


class BundleError(ItmguardError):
    """The model bundle cannot be used."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(f"model bundle {path}: {message}")


class BundleFileMissing(BundleError):
    """A file the bundle must hold is absent."""


class BundleFieldError(BundleError):
    """bundle.json lacks a field, or a field has a bad value."""


class BundleHashMismatch(BundleError):
    """model.onnx does not hash to the sha256 recorded in bundle.json."""

    def __init__(self, path: str, *, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            path,
            f"model.onnx sha256 is {actual} but bundle.json expects {expected}; "
            "the file was changed or replaced after export",
        )


class WarmupFailed(BundleError):
    """The model raised, or gave no probability, on the warm-up batch run before the worker
    joins its consumer group."""

    def __init__(self, path: str, *, batch: int, sequence: int, reason: str) -> None:
        self.batch = batch
        self.sequence = sequence
        super().__init__(
            path, f"the warm-up batch ({batch} pairs of {sequence} tokens) failed: {reason}"
        )


class InputError(ItmguardError):
    """One post cannot be scored. Its verdict is `error` with this code."""

    code = "invalid_input"


class InvalidJson(InputError):
    """The payload is not UTF-8 encoded JSON."""

    code = "invalid_json"


class InvalidEvent(InputError):
    """The JSON does not follow the post-event schema."""

    code = "invalid_event"


class ImageTooLarge(InputError):
    """The encoded image is larger than the byte limit."""

    code = "image_too_large"

    def __init__(self, *, limit: int, actual: int) -> None:
        self.limit = limit
        self.actual = actual
        super().__init__(f"image is {actual} bytes, limit is {limit}")


class ImageTooManyPixels(InputError):
    """The image header declares more pixels than allowed."""

    code = "image_too_many_pixels"

    def __init__(self, *, limit: int, actual: int) -> None:
        self.limit = limit
        self.actual = actual
        super().__init__(f"image has {actual} pixels, limit is {limit}")


class ImageDecodeFailed(InputError):
    """The bytes are not an image Pillow can decode completely."""

    code = "image_decode_failed"


class ImageUrlForbidden(InputError):
    """The URL's scheme is not allowed, or its host is an address posts may not reach."""

    code = "image_url_forbidden"


class ImageFetchTimeout(InputError):
    """The image server did not answer completely within the timeouts."""

    code = "image_fetch_timeout"


class ImageFetchFailed(InputError):
    """The image could not be fetched: HTTP error, refused connection, redirect loop."""

    code = "image_fetch_failed"


class ImageTypeRefused(InputError):
    """The server's content type is not an image type the worker decodes."""

    code = "image_type_refused"


class InferenceFailed(InputError):
    """The model raised on this post while the rest of its batch scored."""

    code = "inference_failed"


class InfraError(ItmguardError):
    """A dependency failed; the work is retried, never dead-lettered."""


class DatabaseUnavailable(InfraError):
    """Postgres refused or dropped the connection, or the transaction failed."""


class DatabaseNotMigrated(InfraError):
    """The database schema is not the one this release was built for."""


class BrokerUnavailable(InfraError):
    """Kafka did not accept a produced message."""


class BatchAbandoned(InfraError):
    """A batch could not be made durable before the shutdown grace period ran out."""


class ReviewError(ItmguardError):
    """A review-queue action cannot be done as asked; the message says why, for the moderator."""

    def __init__(self, item_id: int | None, message: str) -> None:
        self.item_id = item_id
        super().__init__(message)


class ItemNotFound(ReviewError):
    """No review item has that id."""

    def __init__(self, item_id: int) -> None:
        super().__init__(item_id, f"review item {item_id} does not exist")


class ItemNotClaimed(ReviewError):
    """The moderator does not hold the item; it must be claimed first."""

    def __init__(self, item_id: int, moderator: str, message: str | None = None) -> None:
        self.moderator = moderator
        super().__init__(
            item_id, message or f"{moderator} does not hold review item {item_id}: claim it first"
        )


class LeaseExpired(ItemNotClaimed):
    """The moderator's lease on the item ran out; the item went back to the queue."""

    def __init__(self, item_id: int, moderator: str, *, expired_at: datetime) -> None:
        self.expired_at = expired_at
        super().__init__(
            item_id,
            moderator,
            f"{moderator}'s lease on review item {item_id} expired at "
            f"{expired_at.isoformat(timespec='seconds')}: claim it again",
        )


class ItemHeldByOther(ReviewError):
    """Another moderator holds a live lease on the item."""

    def __init__(self, item_id: int, *, holder: str, until: datetime) -> None:
        self.holder = holder
        self.until = until
        super().__init__(
            item_id,
            f"review item {item_id} is held by {holder} until "
            f"{until.isoformat(timespec='seconds')}",
        )


class ItemAlreadyDecided(ReviewError):
    """The item already has its decision; decisions are final."""

    def __init__(self, item_id: int, *, decision: str, by: str) -> None:
        self.decision = decision
        self.by = by
        super().__init__(item_id, f"review item {item_id} was already decided {decision} by {by}")


class OwnSecondOpinion(ReviewError):
    """The item waits for a second opinion, and the moderator gave its first decision."""

    def __init__(self, item_id: int, moderator: str) -> None:
        self.moderator = moderator
        super().__init__(
            item_id,
            f"review item {item_id} waits for a second opinion, which must come from a "
            f"moderator other than {moderator}",
        )


class UndoRefused(ReviewError):
    """The decision cannot be undone: not the moderator's own, or its undo window has passed."""


class UnknownModerator(ReviewError):
    """No enabled moderator account has that name."""

    def __init__(self, username: str) -> None:
        self.username = username
        super().__init__(
            None,
            f"no enabled moderator account {username!r}: an admin creates one with "
            f"`itmguard review add-moderator {username}`",
        )


class ModeratorExists(ReviewError):
    """A moderator account with that name already exists."""

    def __init__(self, username: str) -> None:
        self.username = username
        super().__init__(None, f"moderator account {username!r} already exists")
