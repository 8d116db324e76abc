#!/usr/bin/env python3
"""Writes the browser companion page's Subresource Integrity hashes.

devicelink-web/www/index.html names every asset with an `integrity`
attribute (SHA-384, base64): the stylesheet, the script, the preloaded
wasm-bindgen glue module (its `modulepreload` fixes the module map entry
that app.js's import uses), and the wasm, whose hash app.js reads from
`<meta name="devicelink-wasm-integrity">` and passes to fetch(). Run this
after changing app.js, app.css or rebuilding pkg/ (scripts/build_web.sh);
the relay's test `page::tests::the_page_pins_every_asset_by_integrity`
fails while a hash is stale.
"""
import base64
import hashlib
import pathlib
import re
import sys

WWW = pathlib.Path(__file__).resolve().parent.parent / "devicelink-web" / "www"


def sri(path: str) -> str:
    digest = hashlib.sha384((WWW / path).read_bytes()).digest()
    return "sha384-" + base64.b64encode(digest).decode()


def main() -> int:
    index = WWW / "index.html"
    html = index.read_text()
    for path in ["app.css", "app.js", "pkg/devicelink_web.js", "pkg/devicelink_web_bg.wasm"]:
        # Every tag naming the asset by href/src carries its integrity.
        pattern = re.compile(r'((?:href|src)="' + re.escape(path) + r'"[^>]*?integrity=")[^"]*(")')
        html, n = pattern.subn(lambda m: m.group(1) + sri(path) + m.group(2), html)
        if path.endswith(".wasm"):
            meta = re.compile(r'(<meta name="devicelink-wasm-integrity" content=")[^"]*(")')
            html, m = meta.subn(lambda x: x.group(1) + sri(path) + x.group(2), html)
            n += m
        if n == 0:
            print(f"page_integrity: no integrity slot for {path} in index.html", file=sys.stderr)
            return 1
    index.write_text(html)
    print("page_integrity: index.html pins app.css, app.js, the glue and the wasm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
