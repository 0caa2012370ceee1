//! Builders of hostile weight files, shared by the loader tests of the model crate and the CLI's
//! memory-capped test (`crates/clipdino-cli/tests/hostile.rs` includes this file by path). Every
//! file is written from scratch here, so each test says what it feeds; nothing is committed.
#![allow(dead_code)]

use std::io::Write;

/// `(name, storage class, storage key, storage numel, offset, size, stride)` of one tensor view.
pub type TensorSpec<'a> = (&'a str, &'a str, &'a str, u32, u32, &'a [u32], &'a [u32]);

fn pickle_str(p: &mut Vec<u8>, x: &str) {
    p.push(b'X');
    p.extend_from_slice(&(x.len() as u32).to_le_bytes());
    p.extend_from_slice(x.as_bytes());
}

/// A torch-format pickle of `{name: _rebuild_tensor_v2(('storage', <class>, key, 'cpu', numel),
/// offset, size, stride, False, OrderedDict()), ...}`, sizes as 4-byte ints.
pub fn tensors_pickle(tensors: &[TensorSpec]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    let int = |p: &mut Vec<u8>, v: u32| {
        p.push(b'J');
        p.extend_from_slice(&v.to_le_bytes());
    };
    for &(name, class, key, numel, offset, size, stride) in tensors {
        pickle_str(&mut p, name);
        p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        pickle_str(&mut p, "storage");
        p.extend_from_slice(format!("ctorch\n{class}\n").as_bytes());
        pickle_str(&mut p, key);
        pickle_str(&mut p, "cpu");
        int(&mut p, numel);
        p.extend_from_slice(b"tQ");
        int(&mut p, offset);
        p.push(b'(');
        for &d in size {
            int(&mut p, d);
        }
        p.extend_from_slice(b"t(");
        for &d in stride {
            int(&mut p, d);
        }
        p.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// `os.system(cmd)` as Python's pickle writes it (GLOBAL + REDUCE).
pub fn os_system_pickle(cmd: &str) -> Vec<u8> {
    let mut p = b"\x80\x02cos\nsystem\n".to_vec();
    pickle_str(&mut p, cmd);
    p.extend_from_slice(b"\x85R.");
    p
}

/// A list doubled 64 times through the memo (2^64 elements if copies were free).
pub fn memo_bomb_pickle() -> Vec<u8> {
    let mut p = vec![0x80, 2, b']', b'q', 0];
    for _ in 0..64 {
        p.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
    }
    p.push(b'.');
    p
}

/// `n` nested one-tuples.
pub fn deep_pickle(n: usize) -> Vec<u8> {
    [&[0x80u8, 2, b'N'][..], &vec![0x85u8; n], b"."].concat()
}

/// A torch-format zip (`archive/data.pkl` + `archive/data/<key>`), entries compressed by
/// `method` (torch itself stores them).
pub fn torch_zip_with(
    pkl: &[u8],
    storages: &[(&str, &[u8])],
    method: zip::CompressionMethod,
) -> Vec<u8> {
    let mut zw = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default().compression_method(method);
    zw.start_file("archive/data.pkl", o).unwrap();
    zw.write_all(pkl).unwrap();
    for (k, d) in storages {
        zw.start_file(format!("archive/data/{k}"), o).unwrap();
        zw.write_all(d).unwrap();
    }
    zw.finish().unwrap().into_inner()
}

/// [`torch_zip_with`], stored as torch writes it.
pub fn torch_zip(pkl: &[u8], storages: &[(&str, &[u8])]) -> Vec<u8> {
    torch_zip_with(pkl, storages, zip::CompressionMethod::Stored)
}

/// Add central-directory entries named `aliases` that all point at the local entry of
/// `target`: a zip whose directory lists many files stored once.
pub fn alias_zip_entries(zip: &[u8], target: &str, aliases: &[String]) -> Vec<u8> {
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let eocd = zip.len() - 22;
    assert_eq!(u32_at(zip, eocd), 0x0605_4b50, "no zip comment expected");
    let entries = u16_at(zip, eocd + 10);
    let cd_size = u32_at(zip, eocd + 12) as usize;
    let cd_off = u32_at(zip, eocd + 16) as usize;
    let mut cd = zip[cd_off..cd_off + cd_size].to_vec();
    let mut pos = 0;
    let mut record = None;
    while pos < cd.len() {
        let n = u16_at(&cd, pos + 28);
        let len = 46 + n + u16_at(&cd, pos + 30) + u16_at(&cd, pos + 32);
        if &cd[pos + 46..pos + 46 + n] == target.as_bytes() {
            record = Some(cd[pos..pos + len].to_vec());
        }
        pos += len;
    }
    let record = record.expect("target entry");
    let n = u16_at(&record, 28);
    for a in aliases {
        let mut r = record[..46].to_vec();
        r[28..30].copy_from_slice(&(a.len() as u16).to_le_bytes());
        r.extend_from_slice(a.as_bytes());
        r.extend_from_slice(&record[46 + n..]);
        cd.extend_from_slice(&r);
    }
    let mut out = zip[..cd_off].to_vec();
    out.extend_from_slice(&cd);
    let mut end = zip[eocd..].to_vec();
    let total = (entries + aliases.len()) as u16;
    end[8..10].copy_from_slice(&total.to_le_bytes());
    end[10..12].copy_from_slice(&total.to_le_bytes());
    end[12..16].copy_from_slice(&(cd.len() as u32).to_le_bytes());
    out.extend_from_slice(&end);
    out
}

/// `count` views of one deflated storage of `numel` zero floats: `count · numel · 4` bytes of
/// tensors asked for by a file of a few kB.
pub fn shared_storage_views(count: usize, numel: u32) -> Vec<u8> {
    let names: Vec<String> = (0..count).map(|i| format!("view{i:04}")).collect();
    let size = [numel];
    let tensors: Vec<TensorSpec> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                "FloatStorage",
                "0",
                numel,
                0,
                &size[..],
                &[1][..],
            )
        })
        .collect();
    let zeros = vec![0u8; numel as usize * 4];
    torch_zip_with(
        &tensors_pickle(&tensors),
        &[("0", &zeros)],
        zip::CompressionMethod::Deflated,
    )
}

/// `count` tensors, each naming its own storage, all of which the central directory points at
/// one deflated entry of `numel` zero floats: `count · numel · 4` bytes to inflate.
pub fn aliased_storages(count: usize, numel: u32) -> Vec<u8> {
    let keys: Vec<String> = (0..count).map(|i| format!("k{i}")).collect();
    let names: Vec<String> = (0..count).map(|i| format!("t{i:04}")).collect();
    let tensors: Vec<TensorSpec> = names
        .iter()
        .zip(&keys)
        .map(|(n, k)| {
            (
                n.as_str(),
                "FloatStorage",
                k.as_str(),
                numel,
                0,
                &[1u32][..],
                &[1u32][..],
            )
        })
        .collect();
    let zeros = vec![0u8; numel as usize * 4];
    let base = torch_zip_with(
        &tensors_pickle(&tensors),
        &[("k0", &zeros)],
        zip::CompressionMethod::Deflated,
    );
    let aliases: Vec<String> = keys[1..]
        .iter()
        .map(|k| format!("archive/data/{k}"))
        .collect();
    alias_zip_entries(&base, "archive/data/k0", &aliases)
}

/// A GGUF metadata value, as the hostile files need them.
pub enum Gguf {
    U32(u32),
    I32(i32),
    Str(String),
    /// An array of u8 declaring `n` elements (none present).
    U8Array(u64),
}

/// A GGUF v3 file: `meta`, then tensor infos `(name, dims innermost first, GGML type, offset)`,
/// padded to 32 bytes, then `data`.
pub fn gguf_file(
    meta: &[(&str, Gguf)],
    tensors: &[(&str, &[u64], u32, u64)],
    data: &[u8],
) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend_from_slice(&(x.len() as u64).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
    };
    for (k, v) in meta {
        s(&mut b, k);
        match v {
            Gguf::U32(x) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
            Gguf::I32(x) => {
                b.extend_from_slice(&5u32.to_le_bytes());
                b.extend_from_slice(&x.to_le_bytes());
            }
            Gguf::Str(x) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                s(&mut b, x);
            }
            Gguf::U8Array(n) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&0u32.to_le_bytes());
                b.extend_from_slice(&n.to_le_bytes());
            }
        }
    }
    for (name, dims, ty, offset) in tensors {
        s(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend_from_slice(data);
    b
}

/// The metadata of a clipdino bundle with `clip_config` as its stored config.
pub fn bundle_meta(clip_config: &str) -> Vec<(&'static str, Gguf)> {
    vec![
        ("general.architecture", Gguf::Str("clipdino".into())),
        ("clipdino.format_version", Gguf::U32(1)),
        ("clipdino.clip_config", Gguf::Str(clip_config.into())),
    ]
}

/// Position of each named tensor info in a GGUF v2/v3 file (just after the name: its n_dims).
pub fn gguf_tensor_infos(g: &[u8], names: &[&str]) -> Vec<(String, usize)> {
    names
        .iter()
        .map(|n| {
            let mut key = (n.len() as u64).to_le_bytes().to_vec();
            key.extend_from_slice(n.as_bytes());
            let pos = g
                .windows(key.len())
                .position(|w| w == key.as_slice())
                .unwrap_or_else(|| panic!("tensor info {n}"));
            (n.to_string(), pos + key.len())
        })
        .collect()
}

/// Position of the data offset of the tensor info whose n_dims field is at `nd_pos`.
pub fn gguf_offset_pos(g: &[u8], nd_pos: usize) -> usize {
    let nd = u32::from_le_bytes(g[nd_pos..nd_pos + 4].try_into().unwrap()) as usize;
    nd_pos + 4 + 8 * nd + 4
}

/// A safetensors file with the given header JSON and `data` after it.
pub fn safetensors_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}
