//! A regular file or block device driven through the reactor's io_uring, with O_DIRECT
//! where the file system allows it and the fd registered as a fixed file.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use io_uring::{opcode, types};

use super::{
    Bdev, BdevChannel, BdevInfo, BdevIo, BdevOp, ChildRoute, FileRegistry, SqeSink, Submitted,
};

#[derive(Debug)]
pub struct FileBdev {
    info: BdevInfo,
    path: PathBuf,
    is_block_device: bool,
    direct: bool,
}

impl FileBdev {
    /// Open `path`, creating a sparse file of `create_size` bytes if it does not exist.
    pub fn open(
        name: &str,
        path: &Path,
        block_size: u32,
        create_size: Option<u64>,
    ) -> std::io::Result<Self> {
        if !path.exists() {
            let size = create_size.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} does not exist and no size was given", path.display()),
                )
            })?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            File::create(path)?.set_len(size)?;
        }
        let file = File::open(path)?;
        let meta = file.metadata()?;
        let is_block_device = meta.file_type().is_block_device();
        let bytes = if is_block_device {
            block_device_size(&file)?
        } else {
            meta.len()
        };
        let direct = open_rw(path, true).is_ok();
        Ok(FileBdev {
            info: BdevInfo {
                name: name.into(),
                block_size,
                num_blocks: bytes / block_size as u64,
            },
            path: path.into(),
            is_block_device,
            direct,
        })
    }

    pub fn uses_direct_io(&self) -> bool {
        self.direct
    }
}

fn open_rw(path: &Path, direct: bool) -> std::io::Result<File> {
    let flags = if direct { libc::O_DIRECT } else { 0 };
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
}

fn block_device_size(f: &File) -> std::io::Result<u64> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

impl Bdev for FileBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn sync_io(&self, op: BdevOp, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let f = open_rw(&self.path, self.direct)?;
        match op {
            BdevOp::Read => f.read_exact_at(buf, offset),
            BdevOp::Write => {
                f.write_all_at(buf, offset)?;
                f.sync_data()
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "metadata I/O reads and writes only",
            )),
        }
    }
    fn sync(&self) -> std::io::Result<()> {
        open_rw(&self.path, false)?.sync_all()
    }
    fn open_channel(
        &self,
        files: &mut dyn FileRegistry,
        _: ChildRoute,
    ) -> std::io::Result<Box<dyn BdevChannel>> {
        let file = open_rw(&self.path, self.direct)?;
        let fixed = files.register(file.as_raw_fd());
        Ok(Box::new(FileChannel {
            file,
            fixed,
            is_block_device: self.is_block_device,
        }))
    }
}

struct FileChannel {
    file: File,
    fixed: Option<u32>,
    is_block_device: bool,
}

macro_rules! with_fd {
    ($self:ident, $build:expr) => {
        match $self.fixed {
            Some(i) => $build(types::Fixed(i)).build(),
            None => $build(types::Fd($self.file.as_raw_fd())).build(),
        }
    };
}

impl FileChannel {
    /// Both discard and write zeroes must read back as zeroes on a regular file, so both
    /// punch a hole; a block device gets a real discard or a zero-range.
    fn fallocate_mode(&self, op: BdevOp) -> i32 {
        match (op, self.is_block_device) {
            (BdevOp::WriteZeroes, true) => libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            _ => libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        }
    }
}

impl BdevChannel for FileChannel {
    fn submit(&mut self, io: &BdevIo, sq: &mut dyn SqeSink) -> Submitted {
        let entry = match (io.op, io.buf_index) {
            (BdevOp::Read, Some(bi)) => {
                with_fd!(self, |fd| opcode::ReadFixed::new(fd, io.buf, io.len, bi)
                    .offset(io.offset))
            }
            (BdevOp::Read, None) => with_fd!(self, |fd| opcode::Read::new(fd, io.buf, io.len)
                .offset(io.offset)),
            (BdevOp::Write, Some(bi)) => {
                with_fd!(self, |fd| opcode::WriteFixed::new(fd, io.buf, io.len, bi)
                    .offset(io.offset))
            }
            (BdevOp::Write, None) => with_fd!(self, |fd| opcode::Write::new(fd, io.buf, io.len)
                .offset(io.offset)),
            (BdevOp::Flush, _) => with_fd!(self, |fd| opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)),
            (BdevOp::WriteZeroes | BdevOp::Discard, _) => {
                let mode = self.fallocate_mode(io.op);
                with_fd!(self, |fd| opcode::Fallocate::new(fd, io.len as u64)
                    .offset(io.offset)
                    .mode(mode))
            }
        };
        sq.push(entry.user_data(io.user_data));
        Submitted::Queued
    }
}
