"""Images seen by other programs: a read-only FUSE mount of an image's disk (session.py: mount and
umount; server.py: the serving process; fuse_fs.py: the files; attach.py: partitions' files mounted
at N/ through loop devices or FUSE drivers; tree_view.py: browse trees served in-process where the
machine cannot mount a filesystem; prefetch.py: read-ahead) and exports to virtual disks (export.py).

    diskvault mount IMAGE MNT --all
      MNT/disk.img, MNT/partN.img   <- Chain (cells decoded, cached, read ahead)
      MNT/N/                        <- loop device on MNT/partN.img + mount -o ro  (ext, xfs, btrfs)
                                       ntfs-3g / exfat-fuse on MNT/partN.img       (NTFS, exFAT)
                                       browse tree served by the FUSE fs itself    (FAT without vfat)
"""
