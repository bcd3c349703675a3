"""What a value the backend stored means to the worker: an id, a text, an image's ``src``.

The backend's documents are written by mongoose models and by hand-built objects: an id may
be an ObjectId or its hex string (an id inside an embedded object, such as an order's
``user._id``, is usually the string the browser sent), a name is a string, and an image is a
file name or URL string (Bhavya Bazaar's ``avatar`` and ``images``) or, in other MERN code,
an object ``{public_id, url}``. Each is read the same way wherever it is stored, and a value
of another shape is absent: never an object's Python repr in a payload.
"""

from __future__ import annotations

from collections.abc import Mapping

from bson import ObjectId


def id_text(value: object) -> str | None:
    """A stored id (a non-empty string, or an ObjectId) as a string; anything else: ``None``."""
    if isinstance(value, ObjectId):
        return str(value)
    return value if isinstance(value, str) and value else None


def id_of(value: object) -> str | None:
    """The id of an embedded document (its ``_id``), or of a plain stored id."""
    if isinstance(value, Mapping):
        return id_text(value.get("_id"))
    return id_text(value)


def id_set(values: object) -> frozenset[str]:
    """The ids of a stored array, as strings; entries that are not ids are left out."""
    if not isinstance(values, list):
        return frozenset()
    return frozenset(text for value in values if (text := id_text(value)) is not None)


def text(value: object) -> str | None:
    """A stored string (a name, an email, a role) as it is; anything else: ``None``."""
    return value if isinstance(value, str) else None


def image_src(value: object) -> str | None:
    """What a front end puts into ``src`` for a stored image, or ``None`` when there is none.

    A non-empty string (a file name or a URL) as it is; an object's ``url`` (``{public_id,
    url}``); anything else, an empty string included, is no image.
    """
    if isinstance(value, Mapping):
        value = value.get("url")
    return value if isinstance(value, str) and value else None


def first_image(images: object) -> str | None:
    """The ``src`` of the first usable image of a stored list (a lone image is read too)."""
    if not isinstance(images, list):
        return image_src(images)
    return next((src for image in images if (src := image_src(image)) is not None), None)
