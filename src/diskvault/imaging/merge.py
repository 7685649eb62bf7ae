"""Synthetic full: fold a Full and the Incrementals after it into one Full image, crash-safe.

    target  = the image whose state the new Full takes (IMAGE, or the one that leaves --keep N
              Incrementals after it)
    write   = the target's state, chunk by chunk (stored bytes copied after a check, not
              recompressed), as NAME.merge.partial; fsync
    replace = rename it over the target's own file: same name, same state hash, so the images
              after it keep their parent link
    delete  = the ancestors that only the target needed, newest first

At every moment each file on disk is a valid image and every chain restores.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, replace

from diskvault.crypto.keys import PasswordSource
from diskvault.errors import UsageError
from diskvault.format.chain import Chain
from diskvault.format.codec import compress
from diskvault.format.layout import CHUNK_PATCH, TYPE_FULL, TYPE_INC
from diskvault.format.reader import KeyRing, part_paths
from diskvault.format.writer import ImageWriter, fsync_dir
from diskvault.imaging.pipeline import ordered_map
from diskvault.imaging.sets import Member, scan
from diskvault.ui.progress import NullProgress, Progress

MERGE_SUFFIX = ".merge"


@dataclass
class MergeResult:
    image: str
    merged: list[str]
    deleted: list[str]
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _line_from_full(members: list[Member], newest: Member) -> list[Member]:
    """The chain from the Full to ``newest``, oldest first."""
    by_inc = {m.increment: m for m in members}
    line = [newest]
    while line[0].header.image_type != TYPE_FULL:
        parent = by_inc.get(line[0].header.parent_increment)
        if parent is None:
            raise UsageError(f"{os.path.basename(line[0].path)} has no parent in its folder: cannot merge")
        line.insert(0, parent)
    return line


def choose_target(path: str, keep: int | None) -> tuple[Member, list[Member], list[Member]]:
    """(target, its chain from the Full, all members of the set)."""
    folder = os.path.dirname(os.path.abspath(path))
    members = scan(folder).get(os.path.basename(path)[:16].upper(), [])
    me = next((m for m in members if os.path.samefile(m.path, part_paths(path)[0])), None)
    if me is None:
        raise UsageError(f"{path} is not an image of a backup set in {folder}")
    if keep is None:
        return me, _line_from_full(members, me), members
    newest = max(members, key=lambda m: m.increment)
    line = _line_from_full(members, newest)
    if any(m.header.image_type not in (TYPE_FULL, TYPE_INC) for m in line):
        raise UsageError("--keep works on a chain of Incrementals")
    incs = len(line) - 1
    if incs <= keep:
        raise UsageError(f"nothing to merge: the set has {incs} Incrementals, keeping {keep}")
    target = line[incs - keep]
    return target, line[:incs - keep + 1], members


def merge(path: str, keep: int | None = None, password: PasswordSource | None = None,
          progress: Progress | None = None) -> MergeResult:
    progress = progress or NullProgress()
    started = time.monotonic()
    target, line, members = choose_target(path, keep)
    if len(line) == 1:
        raise UsageError(f"{os.path.basename(target.path)} is already a Full image")
    ancestors = line[:-1]
    gone = {m.increment for m in ancestors}
    needed = [m for m in members if m not in line and m.header.parent_increment in gone and m.header.has_parent]
    if needed:
        raise UsageError(f"cannot merge: {', '.join(os.path.basename(m.path) for m in needed)} "
                         f"depend{'s' if len(needed) == 1 else ''} on images the merge would remove")
    folder = os.path.dirname(os.path.abspath(target.path))
    for stale in os.listdir(folder):  # left-overs of an interrupted merge
        if stale.endswith(MERGE_SUFFIX + ".partial"):
            os.unlink(os.path.join(folder, stale))
    with Chain(target.path, KeyRing(password)) as chain:
        head = chain.head
        header = replace(head.header, image_type=TYPE_FULL, parent_id=b"\0" * 8, parent_increment=0,
                         parent_state_hash=b"\0" * 32, split_part=0)
        final_name = os.path.basename(target.path)
        writer = ImageWriter(folder, header, sealer=head.sealer, final_name=final_name + MERGE_SUFFIX)
        try:
            level = head.metadata.get("compression", "fast")

            def load(j: int) -> tuple[int, int, bytes]:
                """(codec, stored bytes) of cell j as a whole cell; checked, so damage is never copied."""
                m, r = chain.members[int(chain.state.member[j])], int(chain.state.record[j])
                rec = m.index[r]
                data = chain.decode(j)
                if not rec["flags"] & CHUNK_PATCH:
                    return int(rec["codec"]), m.read_stored(r)  # re-use the stored bytes as they are
                codec_id, stored = compress(data, level)
                if head.sealer:
                    stored = head.sealer.seal(stored, head.sealer.chunk_aad(int(rec["disk_offset"]), len(data), codec_id))
                return codec_id, stored

            progress.start("merging", int(chain.state.lengths.sum()))
            for j, (codec_id, stored) in enumerate(ordered_map(load, range(len(chain.state.offsets)))):
                rec = chain.members[int(chain.state.member[j])].index[int(chain.state.record[j])]
                writer.add_chunk(int(rec["disk_offset"]), int(rec["length"]), codec_id, stored,
                                 bytes(rec["content_hash"]))
                progress.advance(int(rec["length"]))
            progress.finish()
            metadata = dict(head.metadata, type="full",
                            merged_from=[os.path.basename(m.path) for m in chain.members])
            temp_final = writer.finish(head.extents, metadata, head.footer.state_hash)
        except BaseException:
            progress.finish()
            writer.abort()
            raise
    old_parts = part_paths(target.path)
    os.replace(temp_final, target.path)  # the atomic step
    for stale in old_parts[1:]:
        os.unlink(stale)
    deleted = []
    for m in reversed(ancestors):
        for p in reversed(part_paths(m.path)):
            os.unlink(p)
            deleted.append(os.path.basename(p))
    fsync_dir(folder)
    return MergeResult(image=target.path, merged=[os.path.basename(m.path) for m in line], deleted=deleted,
                       seconds=round(time.monotonic() - started, 3))
