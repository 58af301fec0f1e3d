import io
import tarfile
import zipfile

import fsspec
import pytest

from workflow.errors import SourceError
from workflow.formats.plan import make_plan
from workflow.inputs.sources import Reader, detect, list_entries, resolve_sources

from conftest import jpeg_bytes


def _files(tmp_path):
    root = tmp_path / "photos"
    files = {"b/Two.JPG": jpeg_bytes(8, 8, 1), "a/one.jpeg": jpeg_bytes(8, 8, 2),
             "c/naïve-日本.png": jpeg_bytes(8, 8, 3), "notes.txt": b"x", ".hidden.jpg": b"x",
             ".git/x.jpg": b"x", "d/UPPER.WEBP": b"webp?"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, files


def _read_all(sources, items):
    with Reader(sources, threads=3, window=2) as r:
        return [(it.key, data, err) for it, data, err in r.iter_bytes(items)]


def test_folder_listing_is_recursive_sorted_any_case_and_skips_hidden(tmp_path):
    root, files = _files(tmp_path)
    src = detect(str(root))
    assert src.kind == "folder"
    keys = [e.key for e in list_entries(src)]
    assert keys == ["a/one.jpeg", "b/Two.JPG", "c/naïve-日本.png", "d/UPPER.WEBP"]
    plan = make_plan([src], [list_entries(src)], 10)
    got = _read_all([src], plan.shard_items(0))
    assert [(k, d) for k, d, _ in got] == [(k, files[k]) for k in keys]


def test_list_files_txt_and_csv(tmp_path):
    root, files = _files(tmp_path)
    (tmp_path / "list.txt").write_text("# comment\nphotos/a/one.jpeg\n\n"
                                       f"{root}/b/Two.JPG\nphotos/missing.jpg\n")
    (tmp_path / "list.csv").write_text("label,Path\ncat,photos/a/one.jpeg\ndog,photos/b/Two.JPG\n")
    txt, csv_ = detect(str(tmp_path / "list.txt")), detect(str(tmp_path / "list.csv"))
    assert [e.key for e in list_entries(txt)] == ["photos/a/one.jpeg", f"{root}/b/Two.JPG",
                                                  "photos/missing.jpg"]
    assert [e.key for e in list_entries(csv_)] == ["photos/a/one.jpeg", "photos/b/Two.JPG"]
    plan = make_plan([txt], [list_entries(txt)], 10)
    got = _read_all([txt], plan.shard_items(0))
    assert got[0][1] == files["a/one.jpeg"] and got[1][1] == files["b/Two.JPG"]
    assert got[2][1] is None and "FileNotFoundError" in got[2][2]


def test_csv_without_a_path_column_names_the_remedy(tmp_path):
    (tmp_path / "bad.csv").write_text("label,where\ncat,x.jpg\n")
    with pytest.raises(SourceError, match="no path column.*label"):
        list_entries(detect(str(tmp_path / "bad.csv")))


@pytest.mark.parametrize("suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz")])
def test_tar_archives_are_read_without_extracting(tmp_path, suffix, mode):
    members = {f"dir/img{i}.jpg": jpeg_bytes(16, 16, i) for i in range(5)}
    members["dir/readme.md"] = b"not an image"
    path = tmp_path / f"a{suffix}"
    with tarfile.open(path, mode) as tf:
        for name in ["dir/img3.jpg", "dir/readme.md", "dir/img0.jpg", "dir/img1.jpg",
                     "dir/img4.jpg", "dir/img2.jpg"]:
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tf.addfile(info, io.BytesIO(members[name]))
    src = detect(str(path))
    assert src.kind == "tar" and src.streaming == (suffix != ".tar")
    entries = list_entries(src)
    assert [e.key for e in entries] == ["dir/img3.jpg", "dir/img0.jpg", "dir/img1.jpg",
                                        "dir/img4.jpg", "dir/img2.jpg"]  # archive order
    plan = make_plan([src], [entries], 2)
    got = [x for i in range(plan.n_shards) for x in _read_all([src], plan.shard_items(i))]
    assert [(k, d) for k, d, _ in got] == [(e.key, members[e.key]) for e in entries]
    assert list(tmp_path.iterdir()) == [path]


def test_zip_archive(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x/b.png", b"B")
        zf.writestr("x/a.jpg", b"A")
        zf.writestr("x/", b"")
    src = detect(str(path))
    entries = list_entries(src)
    got = _read_all([src], make_plan([src], [entries], 5).shard_items(0))
    assert [(k, d) for k, d, _ in got] == [("x/b.png", b"B"), ("x/a.jpg", b"A")]


def test_several_sources_get_prefixed_keys_and_globs_expand(tmp_path):
    for name in ("p1.tar", "p2.tar"):
        with tarfile.open(tmp_path / name, "w") as tf:
            info = tarfile.TarInfo("i.jpg")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    srcs = resolve_sources([str(tmp_path / "p*.tar")])
    plan = make_plan(srcs, [list_entries(s) for s in srcs], 10)
    assert plan.keys == ["p1.tar/i.jpg", "p2.tar/i.jpg"]


def test_fsspec_url_sources(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/srcbucket/imgs/a.jpg", b"aaa")
    fs.pipe_file("/srcbucket/imgs/sub/b.PNG", b"bb")
    try:
        (src,) = resolve_sources(["memory://srcbucket/imgs"])
        entries = list_entries(src)
        assert [e.key for e in entries] == ["a.jpg", "sub/b.PNG"]
        got = _read_all([src], make_plan([src], [entries], 5).shard_items(0))
        assert [d for _, d, _ in got] == [b"aaa", b"bb"]
    finally:
        fs.rm("/srcbucket", recursive=True)


@pytest.mark.parametrize("name, match", [("nowhere", "does not exist"),
                                         ("file.bin", "not a folder, a list file")])
def test_bad_sources_say_what_to_do(tmp_path, name, match):
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(SourceError, match=match):
        resolve_sources([str(tmp_path / name)])
