"""The judge page: a fixed HTML page of known content that every proxy-pool judge serves at ``/judge/page``.

The ``content_integrity`` check fetches it through a proxy and compares the bytes with these: a proxy
that injects a script, an ad or a tracking pixel into pages changes them.  It looks like an ordinary
page (a ``</body>`` to append before, a ``<head>`` to add to) so that injectors that only touch real
pages touch it too.  Part of the plugin surface (``from plugins import JUDGE_PAGE``) because both the
admin server and the built-in checker need it.
"""

from __future__ import annotations

import hashlib

__all__ = ["JUDGE_PAGE", "JUDGE_PAGE_SHA256"]

JUDGE_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>proxy-pool judge page</title>
<link rel="stylesheet" href="/judge/page.css">
</head>
<body>
<h1>proxy-pool judge page</h1>
<p>This page has fixed content. A proxy-pool checker fetches it through a proxy and compares it byte
for byte with the copy it knows: a proxy that changes it (a script, an advertisement, a rewritten
link) is not trusted to carry anyone's traffic.</p>
<p><a href="http://example.com/">example.com</a> &middot; <img src="/judge/pixel.gif" alt="" width="1" height="1"></p>
<script>var judged = true;</script>
</body>
</html>
"""

JUDGE_PAGE_SHA256 = hashlib.sha256(JUDGE_PAGE).hexdigest()
