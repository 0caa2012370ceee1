// A small WebAssembly code-section decoder that counts SIMD instructions (0xFD-prefixed
// opcodes) per function. It walks every instruction with its immediates (MVP, sign-extension,
// bulk memory, reference types, SIMD, relaxed SIMD, tail calls, exceptions, atomics), so a 0xFD
// byte inside an immediate or a data segment is never miscounted, and it checks that every
// function body ends exactly where its size says.

class Reader {
  constructor(bytes, pos = 0, end = bytes.length) {
    this.b = bytes;
    this.p = pos;
    this.end = end;
  }
  byte() {
    if (this.p >= this.end) throw new Error(`read past the end at byte ${this.p}`);
    return this.b[this.p++];
  }
  u32() {
    let result = 0, shift = 0, byte;
    do {
      byte = this.byte();
      result += (byte & 0x7f) * 2 ** shift;
      shift += 7;
    } while (byte & 0x80);
    return result;
  }
  sleb() {
    // value not needed: skip a signed LEB128 of any width
    while (this.byte() & 0x80);
  }
  skip(n) {
    this.p += n;
    if (this.p > this.end) throw new Error('read past the end');
  }
}

const VALTYPES = new Set([0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f]);

function blockType(r) {
  const b = r.b[r.p];
  if (b === 0x40 || VALTYPES.has(b)) r.p++;
  else r.sleb(); // type index (s33)
}

function memarg(r) {
  const align = r.u32();
  if (align & 0x40) r.u32(); // multi-memory: explicit memory index
  r.u32(); // offset
}

/** Names of the SIMD sub-opcodes we report separately (the f32 arithmetic gemm relies on). */
export const SIMD_NAMES = {
  0: 'v128.load', 11: 'v128.store', 12: 'v128.const', 13: 'i8x16.shuffle',
  19: 'f32x4.splat', 27: 'i32x4.extract_lane', 31: 'f32x4.extract_lane',
  77: 'v128.not', 78: 'v128.and', 79: 'v128.andnot', 80: 'v128.or', 81: 'v128.xor', 82: 'v128.bitselect', 83: 'v128.any_true',
  224: 'f32x4.abs', 225: 'f32x4.neg', 227: 'f32x4.sqrt', 228: 'f32x4.add', 229: 'f32x4.sub',
  230: 'f32x4.mul', 231: 'f32x4.div', 232: 'f32x4.min', 233: 'f32x4.max',
  186: 'i32x4.dot_i16x8_s', 174: 'i32x4.add', 181: 'i32x4.mul', 142: 'i16x8.add', 149: 'i16x8.mul',
  110: 'i8x16.add', 0x105: 'f32x4.relaxed_madd',
};

function instructions(r, onSimd) {
  let depth = 1; // the function body is an implicit block
  while (depth > 0) {
    const op = r.byte();
    switch (true) {
      case op === 0x02 || op === 0x03 || op === 0x04 || op === 0x06: blockType(r); depth++; break;
      case op === 0x1f: { // try_table
        blockType(r);
        const n = r.u32();
        for (let i = 0; i < n; i++) {
          const kind = r.byte();
          if (kind === 0x00 || kind === 0x01) r.u32();
          r.u32();
        }
        depth++;
        break;
      }
      case op === 0x0b: depth--; break;
      case op === 0x05 || op === 0x07 || op === 0x19: if (op === 0x07) r.u32(); break; // else, catch, catch_all
      case op === 0x00 || op === 0x01 || op === 0x0f || op === 0x1a || op === 0x1b || op === 0xd1: break;
      case op === 0x0c || op === 0x0d || op === 0x10 || op === 0x12 || op === 0x08 || op === 0x09 || op === 0xd2: r.u32(); break;
      case op === 0x18: r.u32(); depth--; break; // delegate ends a try
      case op === 0x0e: { const n = r.u32(); for (let i = 0; i <= n; i++) r.u32(); break; }
      case op === 0x11 || op === 0x13: r.u32(); r.u32(); break;
      case op === 0x1c: { const n = r.u32(); r.skip(n); break; }
      case op >= 0x20 && op <= 0x26: r.u32(); break;
      case op >= 0x28 && op <= 0x3e: memarg(r); break;
      case op === 0x3f || op === 0x40: r.u32(); break;
      case op === 0x41 || op === 0x42: r.sleb(); break;
      case op === 0x43: r.skip(4); break;
      case op === 0x44: r.skip(8); break;
      case op >= 0x45 && op <= 0xc4: break;
      case op === 0xd0: r.byte(); break;
      case op === 0xfc: {
        const sub = r.u32();
        if (sub <= 7) break;
        if ([9, 11, 13, 15, 16, 17].includes(sub)) r.u32();
        else if ([8, 10, 12, 14].includes(sub)) { r.u32(); r.u32(); }
        else throw new Error(`unknown 0xFC ${sub}`);
        break;
      }
      case op === 0xfd: {
        const sub = r.u32();
        if (sub <= 11 || sub === 92 || sub === 93) memarg(r);
        else if (sub === 12 || sub === 13) r.skip(16);
        else if (sub >= 21 && sub <= 34) r.byte();
        else if (sub >= 84 && sub <= 91) { memarg(r); r.byte(); }
        onSimd(sub);
        break;
      }
      case op === 0xfe: {
        const sub = r.u32();
        if (sub === 0x03) r.byte();
        else memarg(r);
        break;
      }
      default:
        throw new Error(`unknown opcode 0x${op.toString(16)} at byte ${r.p - 1}`);
    }
  }
}

/**
 * Count SIMD instructions in a module: `{ functions, simdFunctions, simd, byOp }` where `byOp`
 * maps a name (or `0xfd N`) to its count.
 */
export function countSimd(bytes) {
  const r = new Reader(bytes);
  const magic = [0x00, 0x61, 0x73, 0x6d];
  if (!magic.every((m, i) => bytes[i] === m)) throw new Error('not a WebAssembly module');
  r.skip(8);
  const out = { functions: 0, simdFunctions: 0, simd: 0, byOp: {} };
  while (r.p < bytes.length) {
    const id = r.byte();
    const size = r.u32();
    const end = r.p + size;
    if (id === 10) {
      const n = r.u32();
      for (let f = 0; f < n; f++) {
        const bodySize = r.u32();
        const bodyEnd = r.p + bodySize;
        const body = new Reader(bytes, r.p, bodyEnd);
        const groups = body.u32();
        for (let g = 0; g < groups; g++) {
          body.u32();
          body.byte();
        }
        let inFn = 0;
        instructions(body, (sub) => {
          inFn++;
          const name = SIMD_NAMES[sub] ?? `0xfd ${sub}`;
          out.byOp[name] = (out.byOp[name] ?? 0) + 1;
        });
        if (body.p !== bodyEnd) throw new Error(`function ${f}: body ends at ${body.p}, expected ${bodyEnd}`);
        out.functions++;
        out.simd += inFn;
        if (inFn) out.simdFunctions++;
        r.p = bodyEnd;
      }
    }
    r.p = end;
  }
  return out;
}
