"""Allowed roots for the app's folder inputs."""

import os

import pytest

from nufilt.roots import allowed_roots, check_allowed


def test_default_is_the_start_folder_and_flags_and_environment_add(tmp_path):
    assert allowed_roots([], {}, start=tmp_path) == [tmp_path.resolve()]
    a, b, c = (tmp_path / name for name in "abc")
    for folder in (a, b, c):
        folder.mkdir()
    roots = allowed_roots(["--allow-root", str(a), "--allow-root", str(b)], {"NUFILT_ALLOWED_ROOTS": str(c)})
    assert roots == [a.resolve(), b.resolve(), c.resolve()]
    assert allowed_roots([], {"NUFILT_ALLOWED_ROOTS": f"{a}{os.pathsep}{b}"}) == [a.resolve(), b.resolve()]
    assert allowed_roots([], {"NUFILT_ALLOWED_ROOTS": ""}, start=tmp_path) == []  # set but empty: nothing


def test_paths_outside_the_roots_are_refused_even_through_symlinks_and_dotdot(tmp_path):
    root, outside = tmp_path / "models", tmp_path / "secret"
    (root / "clip").mkdir(parents=True)
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert check_allowed(root / "clip", [root.resolve()]) == (root / "clip").resolve()
    assert check_allowed(root / "new" / "folder", [root.resolve()])  # a folder to be created
    for bad in (outside, root / "link", root / ".." / "secret", "/etc", tmp_path / "models-other"):
        with pytest.raises(ValueError, match="outside the folders this app may use"):
            check_allowed(bad, [root.resolve()])
    with pytest.raises(ValueError, match="outside"):
        check_allowed(root, [])
    with pytest.raises(ValueError, match="type a folder"):
        check_allowed("  ", [root.resolve()])
