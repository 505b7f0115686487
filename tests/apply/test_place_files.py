"""netns.place_files: mount point files and /etc/netns links made as hard links of the first
(one inode per group: a create costs ~0.4 ms on this machine's ext4 /run, a link 0.02 ms)."""
from __future__ import annotations

import os
import stat

import pytest

from nslab.apply import netns


def test_mount_point_files_share_one_empty_mode_0_inode(tmp_path):
    paths = [str(tmp_path / f"lab.n{i}") for i in range(5)]
    netns.place_files(paths)
    infos = [os.stat(p, follow_symlinks=False) for p in paths]
    assert {s.st_ino for s in infos} == {infos[0].st_ino} and infos[0].st_nlink == 5
    assert stat.S_ISREG(infos[0].st_mode) and stat.S_IMODE(infos[0].st_mode) == 0 and infos[0].st_size == 0


def test_symlinks_are_links_of_the_first_symlink_not_of_its_target(tmp_path):
    target = tmp_path / "etc"
    target.mkdir()
    paths = [str(tmp_path / f"lab.n{i}") for i in range(3)]
    netns.place_files(paths, symlink_to=str(target))
    for p in paths:
        assert os.path.islink(p) and os.readlink(p) == str(target)
    assert os.lstat(paths[2]).st_nlink == 3 and os.stat(str(target)).st_nlink == 2     # the folder is untouched


def test_a_taken_name_stops_there_and_is_named(tmp_path):
    paths = [str(tmp_path / f"lab.n{i}") for i in range(4)]
    (tmp_path / "lab.n2").write_text("someone else's")
    with pytest.raises(FileExistsError) as e:
        netns.place_files(paths)
    assert e.value.filename == paths[2]
    assert os.path.exists(paths[1]) and not os.path.exists(paths[3])       # made before it stay, for the record
    assert (tmp_path / "lab.n2").read_text() == "someone else's"
