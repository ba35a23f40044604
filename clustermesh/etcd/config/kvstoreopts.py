"""The ``--kvstore-opt`` flag: repeated ``key=value`` lists, read as pflag reads them."""

from __future__ import annotations

import csv
from collections.abc import Iterable


def parse_kvstore_opts(opts: Iterable[str]) -> dict[str, str]:
    """Parse repeated ``--kvstore-opt`` values into one mapping (later keys win).

    Each value is ``key=value`` or a comma-separated ``k1=v1,k2=v2`` list, as
    the pflag string-to-string flag reads it: a value with a single ``=`` is one
    pair even if it contains commas (``etcd.address=a,b``); with several ``=``
    it is split like a CSV record (quote a pair to keep a comma in it).
    Surrounding whitespace of keys is dropped.  ValueError names the bad item.
    """
    if isinstance(opts, str):
        opts = [opts]
    result: dict[str, str] = {}
    for item in opts:
        count = item.count("=")
        if count == 0:
            raise ValueError(f"--kvstore-opt {item!r}: must be formatted as key=value")
        if count == 1:
            pairs = [item.strip('"')]
        else:
            try:
                pairs = next(csv.reader([item], strict=True))
            except (csv.Error, StopIteration) as exc:
                raise ValueError(f"--kvstore-opt {item!r}: {exc}") from None
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(
                    f"--kvstore-opt {item!r}: {pair!r} must be formatted as key=value"
                )
            result[key] = value
    return result
