#!/usr/bin/env python3
"""MSAL Python side of tokenwell's cache interop test (core/tests/msal_interop.rs).

Two commands, both for the client-credentials flow against a tokenwell IdP emulator:

  acquire  acquire a token with msal.ConfidentialClientApplication and a
           SerializableTokenCache, then write the cache (MSAL's unified JSON) to --cache-out.
  check    load --cache-in into a SerializableTokenCache and require that
           acquire_token_for_client is answered from that cache (token_source == "cache").

Both print one JSON object on stdout: token_source, the SHA-256 of the access token (never the
token itself), and MSAL's cache environment. Exit codes: 0 ok, 2 usage, 3 not a cache hit,
4 MSAL returned an error.

Why a shim: MSAL Python only accepts https authorities (msal.authority.canonicalize raises
ValueError "Your given address (...) should consist of an https url ...") and the emulator is
plain http on loopback. MSAL is given https://127.0.0.1:PORT/tenant and an http_client that
sends loopback requests over plain http and rewrites the emulator's own http URLs in its
answers to https. MSAL's code, cache schema and cache logic are untouched.
"""

import argparse
import hashlib
import json
import sys
from urllib.parse import urlsplit, urlunsplit

import msal
import requests

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class LoopbackHttpsShim(requests.Session):
    """A requests session that serves MSAL's https URLs for `netloc` over plain http."""

    def __init__(self, netloc):
        super().__init__()
        self._https_base = "https://" + netloc
        self._http_base = "http://" + netloc

    def request(self, method, url, *args, **kwargs):
        if url.startswith(self._https_base):
            url = self._http_base + url[len(self._https_base):]
        response = super().request(method, url, *args, **kwargs)
        if self._http_base.encode() in response.content:
            # Discovery documents name the emulator's endpoints; MSAL wants them in https.
            response._content = response.content.replace(
                self._http_base.encode(), self._https_base.encode()
            )
        return response


def msal_authority(authority):
    """The https authority MSAL is given, and the http client it needs for it."""
    parts = urlsplit(authority)
    if parts.scheme == "https":
        return authority, None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return urlunsplit(("https",) + tuple(parts[1:])), LoopbackHttpsShim(parts.netloc)
    raise SystemExit("refusing plain http to a host that is not loopback: " + authority)


def build_app(args, cache):
    authority, http_client = msal_authority(args.authority)
    kwargs = {}
    if http_client is not None:
        kwargs["http_client"] = http_client
    return msal.ConfidentialClientApplication(
        args.client_id,
        client_credential=args.secret,
        authority=authority,
        token_cache=cache,
        # The emulator is not one of Microsoft's clouds; do not ask login.microsoftonline.com.
        instance_discovery=False,
        **kwargs,
    )


def report(result, cache):
    if "access_token" not in result:
        print(json.dumps({"error": result.get("error"),
                          "error_description": result.get("error_description")}))
        return 4
    environments = sorted({
        entry.get("environment")
        for entry in json.loads(cache.serialize()).get("AccessToken", {}).values()
    })
    print(json.dumps({
        "token_source": result.get("token_source"),
        "access_token_sha256": hashlib.sha256(result["access_token"].encode()).hexdigest(),
        "environments": environments,
        "msal_version": msal.__version__,
    }))
    return 0


def acquire(args):
    cache = msal.SerializableTokenCache()
    app = build_app(args, cache)
    result = app.acquire_token_for_client(scopes=args.scope)
    code = report(result, cache)
    if code == 0:
        with open(args.cache_out, "w", encoding="utf-8") as out:
            out.write(cache.serialize())
    return code


def check(args):
    cache = msal.SerializableTokenCache()
    with open(args.cache_in, encoding="utf-8") as src:
        cache.deserialize(src.read())
    app = build_app(args, cache)
    result = app.acquire_token_for_client(scopes=args.scope)
    code = report(result, cache)
    if code != 0:
        return code
    if result.get("token_source") != "cache":
        print("expected token_source 'cache', got %r" % result.get("token_source"),
              file=sys.stderr)
        return 3
    return 0


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("acquire", "check"):
        command = commands.add_parser(name)
        command.add_argument("--authority", required=True)
        command.add_argument("--client-id", required=True)
        command.add_argument("--secret", required=True)
        command.add_argument("--scope", required=True, action="append")
        if name == "acquire":
            command.add_argument("--cache-out", required=True)
        else:
            command.add_argument("--cache-in", required=True)
    args = parser.parse_args(argv)
    return acquire(args) if args.command == "acquire" else check(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
