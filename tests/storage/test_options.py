"""--storage-options: which protocol the JSON is for, the errors a user sees, and that
the options reach the filesystems fsspec makes afterwards (and never run.json)."""
import json

import fsspec
import fsspec.config
import pytest

from workflow.errors import ConfigError
from workflow.storage.options import keyed, protocol_of, resolve, use_storage_options
from workflow.utils import is_transient


def test_the_protocol_of_a_url_is_its_innermost_one():
    assert protocol_of("s3://bucket/store") == "s3"
    assert protocol_of("simplecache::gs://bucket/x") == "gs"
    assert protocol_of("/content/drive/store") is None
    assert protocol_of("file:///tmp/x") is None


def test_flat_options_are_for_the_store_or_else_the_first_remote_source():
    opts = '{"endpoint_url": "http://127.0.0.1:9000"}'
    assert resolve(opts, ["s3://a/store", "gs://b/src"]) == {
        "s3": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert resolve(opts, ["/local/store", "gs://b/src", "s3://c"]) == {
        "gs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert resolve(None, ["s3://a"]) == {} and resolve("", ["s3://a"]) == {}


def test_options_keyed_by_protocol_are_taken_as_they_are():
    text = '{"s3": {"anon": true}, "gcs": {"token": "anon"}}'
    assert resolve(text, ["/local/store"]) == {"s3": {"anon": True}, "gcs": {"token": "anon"}}
    assert json.loads(keyed(text, ["/x"])) == {"gcs": {"token": "anon"}, "s3": {"anon": True}}
    # a key that is no protocol makes the whole object flat options for the store's
    assert resolve('{"s3": {"anon": true}, "client_kwargs": {}}', ["s3://a"]) == {
        "s3": {"s3": {"anon": True}, "client_kwargs": {}}}


@pytest.mark.parametrize("text, message", [
    ("{endpoint_url: 1}", "not valid JSON"),
    ('["endpoint_url"]', "must be a JSON object"),
    ('{"endpoint_url": "http://h:9000"}', "neither is one"),
])
def test_bad_options_are_named_with_the_remedy(text, message):
    with pytest.raises(ConfigError, match=message):
        resolve(text, ["/local/store", "/local/images"])


def test_the_options_reach_every_filesystem_made_afterwards(monkeypatch):
    monkeypatch.setattr(fsspec.config, "conf", {})
    use_storage_options('{"auto_mkdir": true}', ["memory://store"])
    fs = fsspec.filesystem("memory", skip_instance_cache=True)
    assert fsspec.config.conf == {"memory": {"auto_mkdir": True}}
    assert fs.storage_options.get("auto_mkdir") is True


def test_botocore_network_errors_are_transient_and_its_other_errors_are_not():
    botocore = pytest.importorskip("botocore.exceptions")
    assert is_transient(botocore.EndpointConnectionError(endpoint_url="http://h:1"))
    assert is_transient(botocore.ReadTimeoutError(endpoint_url="http://h:1"))
    assert not is_transient(botocore.NoCredentialsError())
    assert not is_transient(botocore.ParamValidationError(report="bad"))
    assert not is_transient(FileNotFoundError("s3://a/b"))
    assert is_transient(ConnectionResetError())
