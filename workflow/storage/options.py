"""fsspec options for stores and sources on object storage (`--storage-options JSON`).

The options go into fsspec's own configuration (`fsspec.config.conf`, one dict per
protocol), which every filesystem fsspec makes afterwards starts from: the store, the
sources, the stage's workers and Spark tasks (which apply the same JSON first) all see
them. They never enter `run.json`: an endpoint or a key is not a setting of the index.

Two forms: options for one protocol, `{"endpoint_url": "http://127.0.0.1:9000"}`, used
for the store's protocol (or, with a local store, the first remote source's); or keyed
by protocol, `{"s3": {...}, "gcs": {...}}`, when the store and the sources differ.
Without the flag the usual places still apply: for s3:// the `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` variables, `~/.aws`, an instance role; and
fsspec's `FSSPEC_<PROTOCOL>` variables.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

from ..errors import ConfigError

STORAGE_OPTIONS_HELP = (
    "JSON options for the fsspec filesystem of an object-store --store or --source, e.g. "
    "'{\"endpoint_url\": \"http://127.0.0.1:9000\"}' for s3:// (or keyed by protocol: "
    "'{\"s3\": {...}, \"gcs\": {...}}'); default: the environment (AWS_ENDPOINT_URL, "
    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...). Never written to the store")


def protocol_of(url: str) -> str | None:
    """The protocol of `url` (the innermost of a chained URL), None for a local path."""
    from fsspec.core import split_protocol
    proto = split_protocol(str(url).split("::")[-1])[0]
    return None if proto in (None, "file", "local") else proto


def resolve(text: str | None, urls: Iterable[str]) -> dict[str, dict]:
    """{protocol: options} from the --storage-options JSON; `urls` (the store first,
    then the sources) decide which protocol options without a protocol key are for."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--storage-options is not valid JSON ({e.msg} at character "
                          f"{e.pos}): give an object such as '{{\"endpoint_url\": "
                          "\"http://host:9000\"}'") from None
    if not isinstance(options, dict):
        raise ConfigError("--storage-options must be a JSON object, e.g. "
                          "'{\"endpoint_url\": \"http://host:9000\"}'")
    if options and all(_is_protocol(k) and isinstance(v, dict) for k, v in options.items()):
        return options
    remote = [p for p in map(protocol_of, urls) if p]
    if not remote:
        raise ConfigError("--storage-options applies to a store or source on object "
                          "storage (s3://, gs://, ...), and neither is one; leave it out "
                          "for local folders")
    return {remote[0]: options}


def use_storage_options(text: str | None, urls: Iterable[str] = ()) -> dict[str, dict]:
    """Apply the --storage-options JSON to fsspec's configuration (from here on, in this
    process); returns the options keyed by protocol, which a worker applies as they are."""
    import fsspec.config
    resolved = resolve(text, urls)
    for proto, options in resolved.items():
        fsspec.config.conf.setdefault(proto, {}).update(options)
    return resolved


def keyed(text: str | None, urls: Iterable[str]) -> str | None:
    """The JSON keyed by protocol, for workers that do not know the store's URLs."""
    resolved = resolve(text, urls)
    return json.dumps(resolved, sort_keys=True) if resolved else None


def _is_protocol(name: str) -> bool:
    from fsspec.registry import known_implementations, registry
    return name in known_implementations or name in registry
