"""``clustermesh dashboard``: a live view of the mesh in the browser.

The command collects, every ``--refresh`` (2 s), what each cluster's KVStoreMesh says —
its status API (``GET /v1/cluster``) and, when its URL is known, its ``/metrics`` —
reached exactly as ``clustermesh status`` reaches them (:mod:`.collect`), into one
snapshot (:mod:`.snapshot`, numbers from the metrics by :mod:`.promtext`), and serves
it with a page that polls it (:mod:`.server`, files in ``static/``).  Nothing on the
page comes from anywhere but the command.

``GET /api/v1/mesh`` (``Cache-Control: no-store``) answers::

    {"schema": "clustermesh-webview/v1",
     "generatedAt": "2026-01-01T12:00:00+00:00",   # when the round was collected
     "refreshSeconds": 2.0,
     "rows": ["cluster1", ...],                     # source clusters
     "columns": [{"name", "api", "state", "detail", "metrics": URL | null,
                  "sources": [...]}],               # cached-in clusters, their own state
     "cells": [{"source", "cachedIn", "state", "detail",
                "counts": {"nodes", "endpoints", "identities", "services",
                           "endpointslices", "failures"} | null,
                "lag": {"count", "meanSeconds", "p99Seconds"} | null,
                "rejections": {REASON: N} | null,   # null: no metrics
                "heartbeatAgeSeconds": S | null,
                "sources": [...]}],                 # where this cell's data came from
     "problems": [{"cluster", "text"}],
     "certificates": [{"seenBy", "cluster", "role", "subject", "notAfter", "daysLeft",
                       "expiring"}]}

A state is ``ready``, ``not-ready``, ``unreachable`` or ``none`` (not configured);
the cell whose source is its cached-in cluster is the cluster itself.  The snapshot
holds names, states, counts, lag numbers, certificate subjects and not-after times:
never a key, a certificate or a file path.
"""
