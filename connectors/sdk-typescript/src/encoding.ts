// UTF-8 and base64 without TextEncoder, TextDecoder or btoa: the QuickJS engine that runs connectors has none
// of them.

/** The UTF-8 bytes of a string (lone surrogates become U+FFFD, as TextEncoder does). */
export function utf8Encode(text: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    let code = text.charCodeAt(i);
    if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const low = text.charCodeAt(i + 1);
      if (low >= 0xdc00 && low <= 0xdfff) {
        code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        i++;
      }
    }
    if (code >= 0xd800 && code <= 0xdfff) code = 0xfffd;
    if (code < 0x80) {
      out.push(code);
    } else if (code < 0x800) {
      out.push(0xc0 | (code >> 6), 0x80 | (code & 0x3f));
    } else if (code < 0x10000) {
      out.push(0xe0 | (code >> 12), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f));
    } else {
      out.push(0xf0 | (code >> 18), 0x80 | ((code >> 12) & 0x3f), 0x80 | ((code >> 6) & 0x3f), 0x80 | (code & 0x3f));
    }
  }
  return new Uint8Array(out);
}

/** The text of UTF-8 bytes; a malformed sequence becomes U+FFFD, as TextDecoder does. */
export function utf8Decode(bytes: Uint8Array | ArrayLike<number>): string {
  let out = "";
  let chunk: number[] = [];
  const flush = () => {
    out += String.fromCharCode.apply(null, chunk);
    chunk = [];
  };
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    let code = 0xfffd;
    let length = 1;
    const next = (k: number) => (i + k < bytes.length && (bytes[i + k] & 0xc0) === 0x80 ? bytes[i + k] & 0x3f : -1);
    if (b < 0x80) {
      code = b;
    } else if (b >= 0xc2 && b < 0xe0 && next(1) >= 0) {
      code = ((b & 0x1f) << 6) | next(1);
      length = 2;
    } else if (b >= 0xe0 && b < 0xf0 && next(1) >= 0 && next(2) >= 0) {
      const c = ((b & 0x0f) << 12) | (next(1) << 6) | next(2);
      if (c >= 0x800 && (c < 0xd800 || c > 0xdfff)) {
        code = c;
        length = 3;
      }
    } else if (b >= 0xf0 && b < 0xf5 && next(1) >= 0 && next(2) >= 0 && next(3) >= 0) {
      const c = ((b & 0x07) << 18) | (next(1) << 12) | (next(2) << 6) | next(3);
      if (c >= 0x10000 && c <= 0x10ffff) {
        code = c;
        length = 4;
      }
    }
    i += length;
    if (code >= 0x10000) {
      code -= 0x10000;
      chunk.push(0xd800 + (code >> 10), 0xdc00 + (code & 0x3ff));
    } else {
      chunk.push(code);
    }
    if (chunk.length >= 4096) flush();
  }
  flush();
  return out;
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Standard base64 (with padding) of bytes, or of a string's UTF-8 bytes. */
export function base64Encode(data: Uint8Array | string): string {
  const bytes = typeof data === "string" ? utf8Encode(data) : data;
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += ALPHABET[(n >> 18) & 63] + ALPHABET[(n >> 12) & 63];
    out += i + 1 < bytes.length ? ALPHABET[(n >> 6) & 63] : "=";
    out += i + 2 < bytes.length ? ALPHABET[n & 63] : "=";
  }
  return out;
}
