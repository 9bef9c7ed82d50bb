"""Split options of a data spec: ``SPEC?val=0.3&test=0.2``.

A data spec may end in split options, so that everything that carries the spec (configs, Ray
trials, supernet records that ``nas specialize`` and the supernet scorer reread) splits the data
the same way:

* ``val=F``: the fraction of the non-test data held out for validation (default 0.1). The
  searches select and supernets score on this split: on a small data set the default leaves a
  few hundred images, too few to tell close networks apart (one image of 300 is 0.33 points).
* ``test=F``: the fraction held out for test, for sources without a test split of their own
  (``digits``, ``synthetic``, ``folder:``, an ``npz`` file without ``x_test``; default 0.2).

Example:
    >>> split_spec("npz:/data/fashion.npz?val=0.3")
    ('npz:/data/fashion.npz', {'val': 0.3})
"""

from __future__ import annotations

import re

from nas.errors import NasInputError

#: option name -> (default, what it is)
SPLIT_OPTIONS = {"val": (0.1, "fraction of the non-test data held out for validation"),
                 "test": (0.2, "fraction held out for test when the source has none")}
_TRAILER = re.compile(r"\?([A-Za-z_]+=[^?&]*(?:&[A-Za-z_]+=[^?&]*)*)$")


def split_spec(spec: str) -> tuple[str, dict[str, float]]:
    """Separates a data spec from its split options.

    Args:
        spec: a data spec, e.g. ``digits``, ``npz:/d/x.npz?val=0.3``.

    Returns:
        (the spec without options, {option: value} of the options given).

    Raises:
        NasInputError: an unknown option, or a value that is not a fraction in (0, 0.9].
    """
    spec = str(spec)
    match = _TRAILER.search(spec)
    if match is None:
        return spec, {}
    options = {}
    for item in match.group(1).split("&"):
        name, _, text = item.partition("=")
        if name not in SPLIT_OPTIONS:
            raise NasInputError(f"unknown split option {name!r} in {spec!r}; expected "
                                + " or ".join(f"{k}=F ({v[1]})" for k, v in SPLIT_OPTIONS.items()),
                                field="data")
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0.0 < value <= 0.9:
            raise NasInputError(f"{name}={text!r} is not allowed in {spec!r}; expected a "
                                "fraction in (0, 0.9], e.g. val=0.3", field="data")
        options[name] = value
    return spec[:match.start()], options


def join_spec(base: str, options: dict[str, float]) -> str:
    """Returns ``base`` with split options appended (the inverse of :func:`split_spec`).

    Args:
        base: a data spec without options.
        options: {option: value}, e.g. from :func:`split_spec`.

    Returns:
        The spec, e.g. ``npz:/d/x.npz?val=0.3``; ``base`` itself without options.
    """
    if not options:
        return base
    return base + "?" + "&".join(f"{k}={options[k]:g}" for k in SPLIT_OPTIONS if k in options)
