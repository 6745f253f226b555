//! bbolt database files: a writer that lays buckets of sorted key/value pairs out as a fresh
//! bbolt file, and a reader that walks any bbolt file (raftkv's, or one real etcd wrote) back
//! into buckets. Snapshots are bbolt files because etcd's backend is bbolt: `etcdctl snapshot
//! status` and `restore`, and etcd itself, read raftkv's snapshots, and raftkv reads etcd's.
//!
//! # Layout
//!
//! As bbolt 1.3 (`page.go`, `db.go`, `bucket.go`, `freelist.go`) defines it. Integers are
//! little-endian: bbolt writes host order, and every platform etcd ships for is little-endian.
//!
//! The file is a sequence of pages of `page_size` bytes (4096 in the files this writer makes;
//! the reader takes it from the meta page); page `n` starts at byte `n * page_size`. Every page
//! starts with a 16-byte header:
//!
//! ```text
//! 0       8          10         12             16
//! | id u64 | flags u16 | count u16 | overflow u32 |
//! ```
//!
//! `id` is the page's own number, `flags` its kind (0x01 branch, 0x02 leaf, 0x04 meta,
//! 0x10 freelist). A node bigger than a page occupies `1 + overflow` consecutive pages; only
//! the first has a header.
//!
//! Pages 0 and 1 are meta pages: the header, then
//!
//! ```text
//! 16      20        24          28      32          40              48              56         64     72         80
//! | magic | version | page_size | flags | root pgid | root sequence | freelist pgid | pgid u64 | txid | checksum |
//! ```
//!
//! (all u32 up to `flags`, u64 after): magic `0xED0CDAED`, version 2, `root` the root bucket
//! (its keys are the top-level bucket names), `freelist` the freelist page or `u64::MAX` when
//! the freelist is not stored (etcd runs bbolt with `NoFreelistSync`: free pages are then the
//! unreachable ones), `pgid` the number of pages in use, `txid` the transaction that wrote the
//! meta, `checksum` FNV-1a 64 of bytes 16..72 (0 means unchecked). A reader uses the valid meta
//! with the higher txid; the other is the previous transaction's, so a torn write of one meta
//! leaves the file readable.
//!
//! A leaf page is the header, `count` elements of 16 bytes, then keys and values:
//!
//! ```text
//! element: | flags u32 | pos u32 | ksize u32 | vsize u32 |   key at (element start + pos), value right after
//! ```
//!
//! Element flag 0x01 marks a bucket: the value is `| root pgid u64 | sequence u64 |` and, when
//! root is 0 (an "inline" bucket), the bucket's only leaf page follows (header with id 0).
//!
//! A branch page is the header, `count` elements `| pos u32 | ksize u32 | pgid u64 |`, then the
//! keys; each element points at a child page and carries that child's first key.
//!
//! A freelist page is the header and `count` sorted page ids (u64); count `0xFFFF` means the
//! real count is the first u64 and the ids follow it.
//!
//! Keys are 1..=32768 bytes and ascend (byte order) through a page and across a tree.
//!
//! # What the writer makes
//!
//! Pages 0 and 1 hold the metas (txids 2 and 1, as bbolt's `Tx.WriteTo` copy has two of the
//! same state), page 2 an empty freelist, then each bucket's leaves in key order followed by its
//! branch levels bottom-up, then the root bucket's pages. Leaves are filled up to a page; an
//! entry too big for a page gets a leaf of its own spanning overflow pages. A bucket that fits
//! in a quarter page without pages of its own is written inline, as bbolt does. Every page below
//! `pgid` is reachable exactly once, so bbolt's `Tx.Check` finds nothing to report.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Page size of the files the writer makes (bbolt's default: the OS page size on amd64).
pub const PAGE_SIZE: usize = 4096;
/// Longest key bbolt accepts.
pub const MAX_KEY_SIZE: usize = 32768;
/// Longest value bbolt accepts.
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const META_LEN: usize = 64;
/// Bytes of the meta covered by its checksum (everything before the checksum).
const META_SUMMED: usize = 56;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const NO_FREELIST: u64 = u64::MAX;

const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;

/// Page counts at or above this do not fit the header's u16; bbolt panics on such nodes.
const MAX_COUNT: usize = 0xFFFF;
/// bbolt inlines a bucket whose single leaf is at most a quarter page.
const MAX_INLINE_BUCKET: usize = PAGE_SIZE / 4;
const FREELIST_PGID: u64 = 2;
const FIRST_DATA_PGID: u64 = 3;
/// Nesting the reader follows (tree levels plus bucket nesting). A 4 KiB-page tree holding the
/// largest bbolt file is a handful of levels deep, so anything deeper is a corrupt file.
const MAX_DEPTH: usize = 64;
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 1 << 16;

/// A bucket's key/value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
/// Top-level buckets by name, as [`read_all`] returns them.
pub type Buckets = BTreeMap<Vec<u8>, Pairs>;

#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    #[error("bbolt i/o: {0}")]
    Io(#[from] io::Error),
    #[error("not a bbolt database: {0}")]
    NotBbolt(String),
    #[error("corrupt bbolt database: {0}")]
    Corrupt(String),
    #[error("unsupported bbolt database: {0}")]
    Unsupported(String),
    #[error("invalid bbolt entry: {0}")]
    InvalidEntry(String),
}

fn corrupt(detail: impl Into<String>) -> BboltError {
    BboltError::Corrupt(detail.into())
}

/// FNV-1a, 64 bits: the meta page checksum (Go's `hash/fnv.New64a`).
fn fnv64a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_header(page: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    page[0..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(&count.to_le_bytes());
    page[12..16].copy_from_slice(&overflow.to_le_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    page_size: u32,
    flags: u32,
    root: u64,
    sequence: u64,
    freelist: u64,
    pgid: u64,
    txid: u64,
}

impl Meta {
    fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.root.to_le_bytes());
        b[24..32].copy_from_slice(&self.sequence.to_le_bytes());
        b[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        b[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        b[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv64a(&b[..META_SUMMED]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes and validates a meta as bbolt's `meta.validate` does, plus a sane page size.
    fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < META_LEN {
            return Err("truncated".into());
        }
        if u32_at(b, 0) != MAGIC {
            return Err("bad magic".into());
        }
        let version = u32_at(b, 4);
        if version != VERSION {
            return Err(format!("version {version}, expected {VERSION}"));
        }
        let checksum = u64_at(b, 56);
        if checksum != 0 && checksum != fnv64a(&b[..META_SUMMED]) {
            return Err("checksum mismatch".into());
        }
        let page_size = u32_at(b, 8);
        if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(format!("page size {page_size}"));
        }
        Ok(Self {
            page_size,
            flags: u32_at(b, 12),
            root: u64_at(b, 16),
            sequence: u64_at(b, 24),
            freelist: u64_at(b, 32),
            pgid: u64_at(b, 40),
            txid: u64_at(b, 48),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// One element of a node being written: a leaf pair (`flags`, `key`, `value`) or a branch
/// pointer (`key`, `child`).
struct Item {
    flags: u32,
    key: Vec<u8>,
    value: Vec<u8>,
    child: u64,
}

impl Item {
    fn size(&self, leaf: bool) -> usize {
        ELEMENT + self.key.len() + if leaf { self.value.len() } else { 0 }
    }
}

/// Encodes a node: header (id and overflow left 0 for the caller), elements, then the data.
fn encode_node(leaf: bool, items: &[Item]) -> Result<Vec<u8>, BboltError> {
    let count = u16::try_from(items.len())
        .ok()
        .filter(|&c| usize::from(c) < MAX_COUNT)
        .ok_or_else(|| BboltError::InvalidEntry(format!("{} entries in one node", items.len())))?;
    let size = PAGE_HEADER + items.iter().map(|i| i.size(leaf)).sum::<usize>();
    let mut buf = vec![0u8; size];
    let flags = if leaf { LEAF_PAGE } else { BRANCH_PAGE };
    put_header(&mut buf, 0, flags, count, 0);
    let mut data = PAGE_HEADER + ELEMENT * items.len();
    for (i, item) in items.iter().enumerate() {
        let elem = PAGE_HEADER + ELEMENT * i;
        let pos = u32::try_from(data - elem).map_err(|_| too_big(size))?;
        let ksize = u32::try_from(item.key.len()).map_err(|_| too_big(size))?;
        if leaf {
            let vsize = u32::try_from(item.value.len()).map_err(|_| too_big(size))?;
            buf[elem..elem + 4].copy_from_slice(&item.flags.to_le_bytes());
            buf[elem + 4..elem + 8].copy_from_slice(&pos.to_le_bytes());
            buf[elem + 8..elem + 12].copy_from_slice(&ksize.to_le_bytes());
            buf[elem + 12..elem + 16].copy_from_slice(&vsize.to_le_bytes());
        } else {
            buf[elem..elem + 4].copy_from_slice(&pos.to_le_bytes());
            buf[elem + 4..elem + 8].copy_from_slice(&ksize.to_le_bytes());
            buf[elem + 8..elem + 16].copy_from_slice(&item.child.to_le_bytes());
        }
        buf[data..data + item.key.len()].copy_from_slice(&item.key);
        data += item.key.len();
        if leaf {
            buf[data..data + item.value.len()].copy_from_slice(&item.value);
            data += item.value.len();
        }
    }
    Ok(buf)
}

fn too_big(size: usize) -> BboltError {
    BboltError::InvalidEntry(format!("node of {size} bytes"))
}

/// Appends pages to the output, numbering them in write order.
struct Pages<W> {
    out: W,
    next: u64,
}

impl<W: Write> Pages<W> {
    /// Writes an encoded node on as many pages as it needs and returns its page id.
    fn write_node(&mut self, mut node: Vec<u8>) -> Result<u64, BboltError> {
        let count = node.len().div_ceil(PAGE_SIZE).max(1);
        let id = self.next;
        let overflow = u32::try_from(count - 1).map_err(|_| too_big(node.len()))?;
        node[0..8].copy_from_slice(&id.to_le_bytes());
        node[12..16].copy_from_slice(&overflow.to_le_bytes());
        node.resize(count * PAGE_SIZE, 0);
        self.out.write_all(&node)?;
        self.next += count as u64;
        Ok(id)
    }
}

/// Where a finished tree lives: its own pages, or (for a small bucket) inside its parent.
enum Built {
    Page(u64),
    Inline(Vec<u8>),
}

/// Builds one B+tree from leaf items in ascending key order, writing each leaf as it fills.
struct Tree {
    leaf: Vec<Item>,
    leaf_size: usize,
    /// First key and page of every leaf written so far.
    children: Vec<(Vec<u8>, u64)>,
    /// Last key of the last leaf written, for the order check once `leaf` is empty again.
    last_written: Option<Vec<u8>>,
}

impl Tree {
    fn new() -> Self {
        Self {
            leaf: Vec::new(),
            leaf_size: PAGE_HEADER,
            children: Vec::new(),
            last_written: None,
        }
    }

    fn push<W: Write>(&mut self, pages: &mut Pages<W>, item: Item) -> Result<(), BboltError> {
        if item.key.is_empty() || item.key.len() > MAX_KEY_SIZE {
            return Err(BboltError::InvalidEntry(format!(
                "key of {} bytes (bbolt takes 1..={MAX_KEY_SIZE})",
                item.key.len()
            )));
        }
        if item.value.len() > MAX_VALUE_SIZE {
            return Err(BboltError::InvalidEntry(format!(
                "value of {} bytes",
                item.value.len()
            )));
        }
        let prev = self
            .leaf
            .last()
            .map(|i| i.key.as_slice())
            .or(self.last_written.as_deref());
        if prev.is_some_and(|p| p >= item.key.as_slice()) {
            return Err(BboltError::InvalidEntry(format!(
                "key {} is not above the previous one",
                item.key.escape_ascii()
            )));
        }
        let size = item.size(true);
        if !self.leaf.is_empty() && self.leaf_size + size > PAGE_SIZE {
            self.flush_leaf(pages)?;
        }
        self.leaf_size += size;
        self.leaf.push(item);
        Ok(())
    }

    fn flush_leaf<W: Write>(&mut self, pages: &mut Pages<W>) -> Result<(), BboltError> {
        let items = std::mem::take(&mut self.leaf);
        self.leaf_size = PAGE_HEADER;
        let id = pages.write_node(encode_node(true, &items)?)?;
        let first = items.first().map(|i| i.key.clone()).unwrap_or_default();
        self.last_written = items.into_iter().last().map(|i| i.key);
        self.children.push((first, id));
        Ok(())
    }

    /// Finishes a bucket's tree: inline if bbolt would inline it, else on pages.
    fn finish_bucket<W: Write>(self, pages: &mut Pages<W>) -> Result<Built, BboltError> {
        let plain = self.leaf.iter().all(|i| i.flags & BUCKET_LEAF == 0);
        if self.children.is_empty() && plain && self.leaf_size <= MAX_INLINE_BUCKET {
            return Ok(Built::Inline(encode_node(true, &self.leaf)?));
        }
        self.finish_pages(pages).map(Built::Page)
    }

    /// Writes what is left and the branch levels above the leaves; returns the root page.
    fn finish_pages<W: Write>(mut self, pages: &mut Pages<W>) -> Result<u64, BboltError> {
        if !self.leaf.is_empty() || self.children.is_empty() {
            self.flush_leaf(pages)?;
        }
        let mut level = self.children;
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut node: Vec<Item> = Vec::new();
            let mut size = PAGE_HEADER;
            for (key, child) in level {
                let item = Item {
                    flags: 0,
                    key,
                    value: Vec::new(),
                    child,
                };
                let s = item.size(false);
                // At least two children per branch, so each level is smaller than the one
                // below even when keys are longer than a page.
                if node.len() >= 2 && size + s > PAGE_SIZE {
                    next.push(write_branch(pages, std::mem::take(&mut node))?);
                    size = PAGE_HEADER;
                }
                size += s;
                node.push(item);
            }
            next.push(write_branch(pages, node)?);
            level = next;
        }
        level
            .first()
            .map(|&(_, id)| id)
            .ok_or_else(|| corrupt("tree without a root"))
    }
}

fn write_branch<W: Write>(
    pages: &mut Pages<W>,
    node: Vec<Item>,
) -> Result<(Vec<u8>, u64), BboltError> {
    let id = pages.write_node(encode_node(false, &node)?)?;
    let first = node.into_iter().next().map(|i| i.key).unwrap_or_default();
    Ok((first, id))
}

/// Writes a bbolt file of top-level buckets. Pages go out as buckets are filled, so memory
/// stays at about a page per bucket plus one branch entry per leaf written.
pub struct Writer<W: Write + Seek> {
    pages: Pages<W>,
    /// Bucket name → bucket value (header, plus the inline page for inline buckets).
    buckets: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Fills one bucket; see [`Writer::bucket`].
pub struct BucketWriter<'a, W> {
    pages: &'a mut Pages<W>,
    tree: Tree,
}

impl<W: Write> BucketWriter<'_, W> {
    /// Adds a pair; keys must come in strictly ascending byte order.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), BboltError> {
        self.tree.push(
            self.pages,
            Item {
                flags: 0,
                key: key.to_vec(),
                value: value.to_vec(),
                child: 0,
            },
        )
    }
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a file at the beginning of `out`.
    pub fn new(mut out: W) -> Result<Self, BboltError> {
        out.seek(SeekFrom::Start(0))?;
        // Metas and freelist are written last, once the root and page count are known.
        out.write_all(&[0u8; PAGE_SIZE * FIRST_DATA_PGID as usize])?;
        Ok(Self {
            pages: Pages {
                out,
                next: FIRST_DATA_PGID,
            },
            buckets: BTreeMap::new(),
        })
    }

    /// Writes the top-level bucket `name`, whose pairs `fill` puts in ascending key order.
    /// Buckets may come in any order.
    pub fn bucket<E: From<BboltError>>(
        &mut self,
        name: &[u8],
        fill: impl FnOnce(&mut BucketWriter<'_, W>) -> Result<(), E>,
    ) -> Result<(), E> {
        if name.is_empty() || name.len() > MAX_KEY_SIZE {
            return Err(
                BboltError::InvalidEntry(format!("bucket name of {} bytes", name.len())).into(),
            );
        }
        if self.buckets.contains_key(name) {
            return Err(BboltError::InvalidEntry(format!(
                "bucket {} written twice",
                name.escape_ascii()
            ))
            .into());
        }
        let mut b = BucketWriter {
            pages: &mut self.pages,
            tree: Tree::new(),
        };
        fill(&mut b)?;
        let mut value = vec![0u8; BUCKET_HEADER];
        match b.tree.finish_bucket(b.pages)? {
            Built::Page(id) => value[0..8].copy_from_slice(&id.to_le_bytes()),
            Built::Inline(page) => value.extend_from_slice(&page),
        }
        self.buckets.insert(name.to_vec(), value);
        Ok(())
    }

    /// Writes the root bucket, the freelist and the metas; returns `out` positioned at the
    /// end of the file, whose length is a whole number of pages.
    pub fn finish(mut self) -> Result<W, BboltError> {
        let mut root = Tree::new();
        for (name, value) in std::mem::take(&mut self.buckets) {
            root.push(
                &mut self.pages,
                Item {
                    flags: BUCKET_LEAF,
                    key: name,
                    value,
                    child: 0,
                },
            )?;
        }
        let root = root.finish_pages(&mut self.pages)?;
        let pgid = self.pages.next;
        let mut out = self.pages.out;

        let mut page = vec![0u8; PAGE_SIZE];
        put_header(&mut page, FREELIST_PGID, FREELIST_PAGE, 0, 0);
        out.seek(SeekFrom::Start(FREELIST_PGID * PAGE_SIZE as u64))?;
        out.write_all(&page)?;
        for (id, txid) in [(0u64, 2u64), (1, 1)] {
            let meta = Meta {
                page_size: PAGE_SIZE as u32,
                flags: 0,
                root,
                sequence: 0,
                freelist: FREELIST_PGID,
                pgid,
                txid,
            };
            page.fill(0);
            put_header(&mut page, id, META_PAGE, 0, 0);
            page[PAGE_HEADER..PAGE_HEADER + META_LEN].copy_from_slice(&meta.encode());
            out.seek(SeekFrom::Start(id * PAGE_SIZE as u64))?;
            out.write_all(&page)?;
        }
        out.seek(SeekFrom::Start(pgid * PAGE_SIZE as u64))?;
        out.flush()?;
        Ok(out)
    }
}

/// Writes `buckets` as a bbolt file into `out`.
pub fn write_all<W: Write + Seek>(out: W, buckets: &Buckets) -> Result<W, BboltError> {
    let mut w = Writer::new(out)?;
    for (name, pairs) in buckets {
        w.bucket::<BboltError>(name, |b| pairs.iter().try_for_each(|(k, v)| b.put(k, v)))?;
    }
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// Reader
// ---------------------------------------------------------------------------------------------

/// Random-access bytes a bbolt file is read from.
pub trait PageSource {
    /// Bytes available; the database must lie within them.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`, failing if that runs past [`PageSource::size`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl PageSource for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The first `len` bytes of a file (a snapshot file is the database plus a digest).
pub struct FileSource {
    file: File,
    len: u64,
}

impl FileSource {
    pub fn new(file: File, len: u64) -> Self {
        Self { file, len }
    }
}

impl PageSource for FileSource {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.file.read_exact_at(buf, offset)
    }
}

/// Which node an error is about.
#[derive(Clone, Copy)]
enum At {
    Page(u64),
    Inline,
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Page(id) => write!(f, "page {id}"),
            At::Inline => f.write_str("inline bucket page"),
        }
    }
}

/// The root of a tree: a page, or the inline page inside a bucket value.
enum Root<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

fn bucket_root(value: &[u8]) -> Result<Root<'_>, BboltError> {
    if value.len() < BUCKET_HEADER {
        return Err(corrupt(format!(
            "bucket value of {} bytes is shorter than its header",
            value.len()
        )));
    }
    match u64_at(value, 0) {
        0 => Ok(Root::Inline(&value[BUCKET_HEADER..])),
        id => Ok(Root::Page(id)),
    }
}

/// One element of a node as stored.
struct Elem<'a> {
    flags: u32,
    key: &'a [u8],
    value: &'a [u8],
    child: u64,
}

/// Parses the elements of a node whose bytes (header first) are `node`.
fn elements(node: &[u8], at: At) -> Result<(bool, Vec<Elem<'_>>), BboltError> {
    if node.len() < PAGE_HEADER {
        return Err(corrupt(format!("{at}: shorter than a page header")));
    }
    let flags = u16_at(node, 8);
    let leaf = match flags {
        LEAF_PAGE => true,
        BRANCH_PAGE => false,
        other => {
            return Err(corrupt(format!(
                "{at}: a tree node with page flags {other:#x}"
            )))
        }
    };
    let count = usize::from(u16_at(node, 10));
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let elem = PAGE_HEADER + ELEMENT * i;
        if elem + ELEMENT > node.len() {
            return Err(corrupt(format!("{at}: {count} elements do not fit")));
        }
        let (eflags, pos, ksize, vsize, child) = if leaf {
            (
                u32_at(node, elem),
                u32_at(node, elem + 4),
                u32_at(node, elem + 8),
                u32_at(node, elem + 12),
                0,
            )
        } else {
            (
                0,
                u32_at(node, elem),
                u32_at(node, elem + 4),
                0,
                u64_at(node, elem + 8),
            )
        };
        let start = elem + pos as usize;
        let kend = start + ksize as usize;
        let vend = kend + vsize as usize;
        if vend > node.len() {
            return Err(corrupt(format!("{at}: element {i} points past the node")));
        }
        if ksize == 0 {
            return Err(corrupt(format!("{at}: element {i} has an empty key")));
        }
        out.push(Elem {
            flags: eflags,
            key: &node[start..kend],
            value: &node[kend..vend],
            child,
        });
    }
    Ok((leaf, out))
}

/// One bit per page below the high-water mark.
struct PageSet(Vec<u64>);

impl PageSet {
    fn new(pages: u64) -> Self {
        Self(vec![0; (pages / 64 + 1) as usize])
    }

    /// Adds `id`; false if it was there already.
    fn insert(&mut self, id: u64) -> bool {
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        let had = self.0[word] & bit != 0;
        self.0[word] |= bit;
        !had
    }

    fn contains(&self, id: u64) -> bool {
        self.0[(id / 64) as usize] & (1u64 << (id % 64)) != 0
    }
}

/// A page as read: its header fields and all of its bytes (overflow pages included).
struct Page {
    flags: u16,
    overflow: u64,
    bytes: Vec<u8>,
}

type Visit<'f, E> = dyn FnMut(u32, &[u8], &[u8]) -> Result<(), E> + 'f;

/// Reads a bbolt file. Every offset it follows is bounds-checked against the file and the
/// meta's page count, and every page is visited at most once per walk, so corrupt input ends
/// in an error rather than a panic or a loop.
pub struct Reader<S> {
    src: S,
    page_size: u64,
    meta: Meta,
}

impl<S: PageSource> Reader<S> {
    /// Picks the meta bbolt would use: the valid one with the higher txid.
    pub fn open(src: S) -> Result<Self, BboltError> {
        let size = src.size();
        let mut first = [0u8; PAGE_HEADER + META_LEN];
        if size < first.len() as u64 {
            return Err(BboltError::NotBbolt(format!("{size} bytes is too short")));
        }
        src.read_exact_at(&mut first, 0)?;
        let meta0 = Meta::decode(&first[PAGE_HEADER..]);
        // Like bbolt: the page size comes from meta 0; if that is damaged, assume the default.
        let page_size = meta0
            .as_ref()
            .map_or(PAGE_SIZE as u64, |m| m.page_size.into());
        if size < 2 * page_size {
            return Err(BboltError::NotBbolt(format!(
                "{size} bytes is less than two {page_size}-byte pages"
            )));
        }
        let mut second = [0u8; PAGE_HEADER + META_LEN];
        src.read_exact_at(&mut second, page_size)?;
        let meta1 = Meta::decode(&second[PAGE_HEADER..]).and_then(|m| {
            if u64::from(m.page_size) == page_size {
                Ok(m)
            } else {
                Err(format!("page size {} differs from meta 0's", m.page_size))
            }
        });
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(e0), Err(e1)) => {
                return Err(BboltError::NotBbolt(format!(
                    "meta page 0: {e0}; meta page 1: {e1}"
                )))
            }
        };
        let in_file = size / page_size;
        if meta.pgid > in_file {
            return Err(corrupt(format!(
                "meta counts {} pages, the file holds {in_file}",
                meta.pgid
            )));
        }
        if meta.root < 2 || meta.root >= meta.pgid {
            return Err(corrupt(format!("root page {} out of range", meta.root)));
        }
        if meta.freelist != NO_FREELIST && (meta.freelist < 2 || meta.freelist >= meta.pgid) {
            return Err(corrupt(format!(
                "freelist page {} out of range",
                meta.freelist
            )));
        }
        Ok(Self {
            src,
            page_size,
            meta,
        })
    }

    /// The transaction that wrote the state being read.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// Bytes of the database: pages in use times the page size (bbolt's `Tx.Size`).
    pub fn db_size(&self) -> u64 {
        self.meta.pgid * self.page_size
    }

    fn read_page(&self, id: u64) -> Result<Page, BboltError> {
        if id < 2 || id >= self.meta.pgid {
            return Err(corrupt(format!(
                "page {id} is not a data page below the high-water mark {}",
                self.meta.pgid
            )));
        }
        let mut header = [0u8; PAGE_HEADER];
        self.src.read_exact_at(&mut header, id * self.page_size)?;
        let stored = u64_at(&header, 0);
        if stored != id {
            return Err(corrupt(format!("page {id} carries id {stored}")));
        }
        let overflow = u64::from(u32_at(&header, 12));
        if id + overflow >= self.meta.pgid {
            return Err(corrupt(format!(
                "page {id} overflows past the high-water mark"
            )));
        }
        let mut bytes = vec![0u8; ((overflow + 1) * self.page_size) as usize];
        self.src.read_exact_at(&mut bytes, id * self.page_size)?;
        Ok(Page {
            flags: u16_at(&header, 8),
            overflow,
            bytes,
        })
    }

    /// Visits the leaf elements of a tree in order, checking that keys ascend.
    fn visit<E: From<BboltError>>(
        &self,
        root: &Root<'_>,
        seen: &mut PageSet,
        depth: usize,
        f: &mut Visit<'_, E>,
    ) -> Result<(), E> {
        let mut last: Option<Vec<u8>> = None;
        self.walk(root, seen, depth, &mut |flags, k, v| {
            if let Some(prev) = &mut last {
                if prev.as_slice() >= k {
                    return Err(corrupt(format!("key {} out of order", k.escape_ascii())).into());
                }
                prev.clear();
                prev.extend_from_slice(k);
            } else {
                last = Some(k.to_vec());
            }
            f(flags, k, v)
        })
    }

    fn walk<E: From<BboltError>>(
        &self,
        root: &Root<'_>,
        seen: &mut PageSet,
        depth: usize,
        f: &mut Visit<'_, E>,
    ) -> Result<(), E> {
        if depth > MAX_DEPTH {
            return Err(corrupt("tree nested deeper than any real database").into());
        }
        let id = match *root {
            Root::Inline(bytes) => {
                let (leaf, elems) = elements(bytes, At::Inline)?;
                if !leaf {
                    return Err(corrupt("inline bucket page is a branch").into());
                }
                for e in elems {
                    f(e.flags, e.key, e.value)?;
                }
                return Ok(());
            }
            Root::Page(id) => id,
        };
        let page = self.read_page(id)?;
        for p in id..=id + page.overflow {
            if !seen.insert(p) {
                return Err(corrupt(format!("page {p} is referenced twice")).into());
            }
        }
        let (leaf, elems) = elements(&page.bytes, At::Page(id))?;
        for e in elems {
            if leaf {
                f(e.flags, e.key, e.value)?;
            } else {
                self.walk(&Root::Page(e.child), seen, depth + 1, f)?;
            }
        }
        Ok(())
    }

    /// Names of the top-level buckets, in order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, BboltError> {
        let mut names = Vec::new();
        let mut seen = PageSet::new(self.meta.pgid);
        self.visit::<BboltError>(
            &Root::Page(self.meta.root),
            &mut seen,
            0,
            &mut |flags, k, _| {
                if flags & BUCKET_LEAF == 0 {
                    return Err(corrupt(format!(
                        "root bucket holds plain key {}",
                        k.escape_ascii()
                    )));
                }
                names.push(k.to_vec());
                Ok(())
            },
        )?;
        Ok(names)
    }

    /// The stored value (header and inline page) of top-level bucket `name`.
    fn bucket_value(&self, name: &[u8]) -> Result<Option<Vec<u8>>, BboltError> {
        let mut found = None;
        let mut seen = PageSet::new(self.meta.pgid);
        self.visit::<BboltError>(
            &Root::Page(self.meta.root),
            &mut seen,
            0,
            &mut |flags, k, v| {
                if k == name && flags & BUCKET_LEAF != 0 {
                    found = Some(v.to_vec());
                }
                Ok(())
            },
        )?;
        Ok(found)
    }

    /// Calls `f` with every pair of top-level bucket `name` in key order. Returns false if
    /// there is no such bucket. Nested buckets are unsupported (etcd never makes them).
    pub fn for_each<E: From<BboltError>>(
        &self,
        name: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let Some(value) = self.bucket_value(name)? else {
            return Ok(false);
        };
        let root = bucket_root(&value)?;
        let mut seen = PageSet::new(self.meta.pgid);
        self.visit(&root, &mut seen, 0, &mut |flags, k, v| {
            if flags & BUCKET_LEAF != 0 {
                return Err(BboltError::Unsupported(format!(
                    "bucket {} holds nested bucket {}",
                    name.escape_ascii(),
                    k.escape_ascii()
                ))
                .into());
            }
            f(k, v)
        })?;
        Ok(true)
    }

    /// bbolt's `Tx.Check`: every page is referenced at most once, and every page below the
    /// high-water mark is reachable or free but not both (when the freelist is stored; without
    /// it, bbolt takes the unreachable pages as the free ones).
    pub fn check(&self) -> Result<(), BboltError> {
        let pgid = self.meta.pgid;
        let mut reachable = PageSet::new(pgid);
        reachable.insert(0);
        reachable.insert(1);
        let mut free = PageSet::new(pgid);
        let synced = self.meta.freelist != NO_FREELIST;
        if synced {
            let id = self.meta.freelist;
            let page = self.read_page(id)?;
            if page.flags != FREELIST_PAGE {
                return Err(corrupt(format!(
                    "freelist page {id} has flags {:#x}",
                    page.flags
                )));
            }
            for p in id..=id + page.overflow {
                reachable.insert(p);
            }
            for free_id in freelist_ids(&page.bytes, id)? {
                if free_id < 2 || free_id >= pgid {
                    return Err(corrupt(format!("free page {free_id} out of range")));
                }
                if !free.insert(free_id) {
                    return Err(corrupt(format!("page {free_id} is freed twice")));
                }
            }
        }
        self.check_tree(&Root::Page(self.meta.root), &mut reachable, 0)?;
        for id in 0..pgid {
            match (reachable.contains(id), free.contains(id)) {
                (true, true) => return Err(corrupt(format!("page {id} is reachable and free"))),
                (false, false) if synced => {
                    return Err(corrupt(format!("page {id} is unreachable and not free")))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_tree(
        &self,
        root: &Root<'_>,
        reachable: &mut PageSet,
        depth: usize,
    ) -> Result<(), BboltError> {
        let mut nested = Vec::new();
        self.visit::<BboltError>(root, reachable, depth, &mut |flags, _, v| {
            if flags & BUCKET_LEAF != 0 {
                nested.push(v.to_vec());
            }
            Ok(())
        })?;
        for value in nested {
            self.check_tree(&bucket_root(&value)?, reachable, depth + 1)?;
        }
        Ok(())
    }

    /// Levels of the tree of bucket `name` (1: a single leaf).
    #[cfg(test)]
    fn depth(&self, name: &[u8]) -> Result<usize, BboltError> {
        let value = self
            .bucket_value(name)?
            .ok_or_else(|| corrupt("no such bucket"))?;
        let Root::Page(mut id) = bucket_root(&value)? else {
            return Ok(1);
        };
        let mut depth = 1;
        loop {
            let page = self.read_page(id)?;
            let (leaf, elems) = elements(&page.bytes, At::Page(id))?;
            match elems.first() {
                Some(e) if !leaf => id = e.child,
                _ => return Ok(depth),
            }
            depth += 1;
        }
    }
}

fn freelist_ids(page: &[u8], id: u64) -> Result<Vec<u64>, BboltError> {
    let mut count = u64::from(u16_at(page, 10));
    let mut start = PAGE_HEADER;
    if count == MAX_COUNT as u64 {
        if page.len() < PAGE_HEADER + 8 {
            return Err(corrupt(format!("freelist page {id} is truncated")));
        }
        count = u64_at(page, PAGE_HEADER);
        start += 8;
    }
    let fits = ((page.len() - start) / 8) as u64;
    if count > fits {
        return Err(corrupt(format!(
            "freelist page {id} lists {count} ids, room for {fits}"
        )));
    }
    Ok((0..count as usize)
        .map(|i| u64_at(page, start + 8 * i))
        .collect())
}

/// Reads every top-level bucket of a bbolt file.
pub fn read_all<S: PageSource>(src: S) -> Result<Buckets, BboltError> {
    let reader = Reader::open(src)?;
    let mut out = Buckets::new();
    for name in reader.bucket_names()? {
        let mut pairs = Vec::new();
        reader.for_each::<BboltError>(&name, |k, v| {
            pairs.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        out.insert(name, pairs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::*;

    fn write(buckets: &Buckets) -> Vec<u8> {
        write_all(Cursor::new(Vec::new()), buckets)
            .expect("write")
            .into_inner()
    }

    fn pairs(n: usize, key_len: usize, value_len: usize) -> Pairs {
        (0..n)
            .map(|i| {
                let mut k = format!("{i:08}").into_bytes();
                k.resize(key_len.max(8), b'k');
                (k, vec![(i % 251) as u8; value_len])
            })
            .collect()
    }

    fn buckets(list: Vec<(&str, Pairs)>) -> Buckets {
        list.into_iter()
            .map(|(n, p)| (n.as_bytes().to_vec(), p))
            .collect()
    }

    /// (page id, flags, overflow) of every page of a file the writer made, in file order.
    fn page_headers(file: &[u8]) -> Vec<(u64, u16, u32)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < file.len() {
            let p = &file[at..];
            let overflow = u32_at(p, 12);
            out.push((u64_at(p, 0), u16_at(p, 8), overflow));
            at += (overflow as usize + 1) * PAGE_SIZE;
        }
        out
    }

    #[test]
    fn round_trips_table() {
        let cases: Vec<(&str, Buckets, usize)> = vec![
            ("no buckets", Buckets::new(), 0),
            ("one empty bucket", buckets(vec![("key", vec![])]), 1),
            (
                "etcd's empty buckets",
                buckets(
                    ["alarm", "auth", "authRoles", "authUsers", "members"]
                        .into_iter()
                        .map(|n| (n, vec![]))
                        .collect(),
                ),
                1,
            ),
            (
                "small inline bucket",
                buckets(vec![("meta", pairs(3, 8, 8))]),
                1,
            ),
            (
                "one full leaf",
                buckets(vec![("key", pairs(60, 17, 40))]),
                2,
            ),
            (
                "thousands of keys",
                buckets(vec![("key", pairs(10_000, 17, 30))]),
                3,
            ),
            // 200-byte keys fill branch pages fast: three branch levels.
            ("long keys", buckets(vec![("key", pairs(6000, 200, 10))]), 4),
            (
                "value bigger than a page",
                buckets(vec![("key", pairs(3, 8, 10_000))]),
                2,
            ),
            (
                "big and small values interleaved",
                buckets(vec![(
                    "key",
                    (0..40)
                        .map(|i| {
                            let len = if i % 3 == 0 { 9000 } else { 20 };
                            (format!("k{i:03}").into_bytes(), vec![i as u8; len])
                        })
                        .collect(),
                )]),
                2,
            ),
            (
                "maximum key size",
                buckets(vec![("b", pairs(5, MAX_KEY_SIZE, 1))]),
                3,
            ),
            (
                "many buckets",
                (0..300)
                    .map(|i| (format!("bucket{i:04}").into_bytes(), pairs(i % 7, 8, 8)))
                    .collect(),
                1,
            ),
        ];
        for (name, input, min_depth) in cases {
            let file = write(&input);
            assert_eq!(file.len() % PAGE_SIZE, 0, "{name}: whole pages");
            let reader = Reader::open(file.as_slice()).expect(name);
            reader
                .check()
                .unwrap_or_else(|e| panic!("{name}: check: {e}"));
            assert_eq!(reader.db_size(), file.len() as u64, "{name}");
            assert_eq!(read_all(file.as_slice()).expect(name), input, "{name}");
            if min_depth > 0 {
                let first = input.keys().next().expect("a bucket");
                let depth = reader.depth(first).expect(name);
                assert!(depth >= min_depth, "{name}: depth {depth} < {min_depth}");
            }
        }
    }

    #[test]
    fn big_values_use_overflow_pages_and_small_buckets_are_inline() {
        let file = write(&buckets(vec![
            ("key", pairs(2, 8, 3 * PAGE_SIZE)),
            ("meta", pairs(2, 8, 8)),
        ]));
        let headers = page_headers(&file);
        assert!(
            headers.iter().any(|&(_, f, o)| f == LEAF_PAGE && o >= 2),
            "{headers:?}"
        );
        // Page ids are the pages' positions: metas, freelist, then data.
        let mut expected = 0;
        for &(id, _, overflow) in &headers {
            assert_eq!(id, expected);
            expected += u64::from(overflow) + 1;
        }
        assert_eq!(
            headers[..3].iter().map(|h| h.1).collect::<Vec<_>>(),
            [META_PAGE, META_PAGE, FREELIST_PAGE]
        );
        let reader = Reader::open(file.as_slice()).unwrap();
        let meta = reader.bucket_value(b"meta").unwrap().unwrap();
        assert_eq!(u64_at(&meta, 0), 0, "meta bucket is inline");
    }

    #[test]
    fn writer_rejects_bad_input() {
        let cases: Vec<(&str, Pairs)> = vec![
            ("empty key", vec![(vec![], vec![1])]),
            (
                "unsorted",
                vec![(b"b".to_vec(), vec![]), (b"a".to_vec(), vec![])],
            ),
            (
                "duplicate",
                vec![(b"a".to_vec(), vec![]), (b"a".to_vec(), vec![])],
            ),
            ("key too long", vec![(vec![1; MAX_KEY_SIZE + 1], vec![])]),
            (
                "unsorted across a page",
                pairs(200, 8, 30)
                    .into_iter()
                    .chain([(b"0".to_vec(), vec![])])
                    .collect(),
            ),
        ];
        for (name, p) in cases {
            let res = write_all(Cursor::new(Vec::new()), &buckets(vec![("b", p)]));
            assert!(
                matches!(res, Err(BboltError::InvalidEntry(_))),
                "{name}: {:?}",
                res.err()
            );
        }
        let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
        w.bucket::<BboltError>(b"x", |_| Ok(())).unwrap();
        assert!(w.bucket::<BboltError>(b"x", |_| Ok(())).is_err(), "twice");
        assert!(w.bucket::<BboltError>(b"", |_| Ok(())).is_err(), "no name");
    }

    #[test]
    fn meta_choice_follows_txid_and_validity() {
        let file = write(&buckets(vec![("key", pairs(10, 8, 8))]));
        let txid = |f: &[u8]| Reader::open(f).map(|r| r.txid());
        assert_eq!(txid(&file).unwrap(), 2);
        // Damaged meta 0: meta 1 (the previous transaction) still opens the file.
        let mut bad0 = file.clone();
        bad0[PAGE_HEADER + 20] ^= 0xff;
        assert_eq!(txid(&bad0).unwrap(), 1);
        assert_eq!(
            read_all(bad0.as_slice()).unwrap(),
            read_all(file.as_slice()).unwrap()
        );
        let mut bad1 = file.clone();
        bad1[PAGE_SIZE + PAGE_HEADER + 20] ^= 0xff;
        assert_eq!(txid(&bad1).unwrap(), 2);
        let mut both = bad0.clone();
        both[PAGE_SIZE + PAGE_HEADER + 20] ^= 0xff;
        assert!(matches!(txid(&both), Err(BboltError::NotBbolt(_))));
    }

    /// Overwrites a u64 at `at` (little-endian).
    fn poke(file: &[u8], at: usize, v: u64) -> Vec<u8> {
        let mut f = file.to_vec();
        f[at..at + 8].copy_from_slice(&v.to_le_bytes());
        f
    }

    /// Rewrites both metas with `edit` applied and valid checksums.
    fn with_meta(file: &[u8], edit: impl Fn(&mut Meta)) -> Vec<u8> {
        let mut f = file.to_vec();
        for id in 0..2 {
            let at = id * PAGE_SIZE + PAGE_HEADER;
            let mut m = Meta::decode(&f[at..]).unwrap();
            edit(&mut m);
            f[at..at + META_LEN].copy_from_slice(&m.encode());
        }
        f
    }

    #[test]
    fn reader_rejects_corrupt_files() {
        let input = buckets(vec![
            ("key", pairs(3000, 17, 20)),
            ("lease", pairs(3, 8, 8)),
        ]);
        let file = write(&input);
        let root = Meta::decode(&file[PAGE_HEADER..]).unwrap().root as usize;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("one page", file[..PAGE_SIZE].to_vec()),
            ("truncated to half", file[..file.len() / 2].to_vec()),
            (
                "truncated by a page",
                file[..file.len() - PAGE_SIZE].to_vec(),
            ),
            ("zeros", vec![0; file.len()]),
            (
                "root points at a meta page",
                with_meta(&file, |m| m.root = 1),
            ),
            (
                "root beyond the end",
                with_meta(&file, |m| m.root = m.pgid + 5),
            ),
            (
                "page count beyond the file",
                with_meta(&file, |m| m.pgid += 1),
            ),
            (
                "root page id field wrong",
                poke(&file, root * PAGE_SIZE, 12345),
            ),
            ("root page flags wrong", {
                let mut f = file.clone();
                f[root * PAGE_SIZE + 8] = 0x40;
                f
            }),
            ("element count too large", {
                let mut f = file.clone();
                f[root * PAGE_SIZE + 10] = 0xff;
                f[root * PAGE_SIZE + 11] = 0x7f;
                f
            }),
            ("leaf overflow past the end", {
                let mut f = file.clone();
                f[3 * PAGE_SIZE + 12..3 * PAGE_SIZE + 16].copy_from_slice(&u32::MAX.to_le_bytes());
                f
            }),
            ("branch points at itself", {
                // Find the key bucket's root branch and aim its first child at itself.
                let reader = Reader::open(file.as_slice()).unwrap();
                let v = reader.bucket_value(b"key").unwrap().unwrap();
                let id = u64_at(&v, 0) as usize;
                poke(&file, id * PAGE_SIZE + PAGE_HEADER + 8, id as u64)
            }),
            (
                "unreachable page",
                with_meta(&file, |m| m.pgid += 1)
                    .into_iter()
                    .chain(vec![0; PAGE_SIZE])
                    .collect(),
            ),
        ];
        for (name, bad) in cases {
            let res = Reader::open(bad.as_slice()).and_then(|r| {
                r.check()?;
                read_all(bad.as_slice())
            });
            assert!(res.is_err(), "{name}: accepted");
        }
    }

    fn arb_buckets() -> impl Strategy<Value = Buckets> {
        let key = prop::collection::vec(any::<u8>(), 1..40);
        let value = prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..64),
            1 => prop::collection::vec(any::<u8>(), 4000..9000),
        ];
        let bucket = prop::collection::btree_map(key, value, 0..300)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>());
        prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..12), bucket, 0..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trips(input in arb_buckets()) {
            let file = write(&input);
            let reader = Reader::open(file.as_slice()).unwrap();
            prop_assert!(reader.check().is_ok());
            prop_assert_eq!(read_all(file.as_slice()).unwrap(), input);
        }

        /// Damage anywhere gives an error or some content, never a panic or a hang.
        #[test]
        fn corrupt_input_never_panics(
            input in arb_buckets(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let mut file = write(&input);
            for (at, byte) in flips {
                let i = at.index(file.len());
                file[i] = byte;
            }
            if truncate {
                file.truncate(cut.index(file.len()));
            }
            if let Ok(r) = Reader::open(file.as_slice()) {
                let _ = r.check();
            }
            let _ = read_all(file.as_slice());
        }
    }
}
