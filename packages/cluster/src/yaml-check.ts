/**
 * What the checkers of hvlab's YAML files share (topology.ts, experiment.ts): reading the text into
 * its root map with the line of every node, and problems that name the line, the column and the
 * field. A file's checker collects every problem it finds, then throws them together.
 */
import { isMap, isScalar, isSeq, Lexer, LineCounter, parseDocument, visit, type Node, type Pair, type YAMLMap } from 'yaml';
import { isUtf8 } from 'node:buffer';
import { parseSeed, seedProblem } from '@hvlab/protocol';

export interface FileProblem {
  /** 1-based; 0 when the problem has no place in the file (unreadable, empty). */
  line: number;
  column: number;
  /** The field's path, e.g. `vms.web.host`, `methods[2]`. */
  field: string;
  message: string;
}

export interface CheckCtx {
  problems: FileProblem[];
  lines: LineCounter;
}

/** How many problems an error's message lists (its `problems` keep every one). */
export const MESSAGE_MAX_PROBLEMS = 20;

/**
 * The message of a file's error: a problem a line, each with its file, line, column and field; the
 * first MESSAGE_MAX_PROBLEMS of them, then how many more. A 790 KB file of 80,000 unknown keys
 * printed 80,000 lines (12 MB, each with the list of fields) before the shell was back.
 */
export function problemsText(file: string, problems: readonly FileProblem[], max = MESSAGE_MAX_PROBLEMS): string {
  // Problems made elsewhere than problem() (the YAML parser's, a runner's own) are made visible here too.
  const line = (p: FileProblem): string => visibleText(`${file}${p.line ? `:${p.line}:${p.column}` : ''}: ${p.field ? `${p.field}: ` : ''}${p.message}`);
  const shownOnes = problems.slice(0, max).map(line);
  const rest = problems.length - shownOnes.length;
  return [...shownOnes, ...(rest > 0 ? [`${file}: … and ${rest} more problem${rest === 1 ? '' : 's'}`] : [])].join('\n');
}

/**
 * Offset of the first byte sequence of `b` that is not UTF-8, or null when all of it is: a byte no
 * sequence begins with (a continuation byte, 0xC0, 0xC1, 0xF5-0xFF), or one whose sequence is cut
 * short, has a wrong continuation, is overlong, is a surrogate or is past U+10FFFF (the Encoding
 * Standard's decoder makes U+FFFD of each).
 */
export function firstNonUtf8(b: Uint8Array): number | null {
  for (let i = 0; i < b.length;) {
    const c = b[i]!;
    if (c < 0x80) {
      i++;
      continue;
    }
    // Continuation bytes after the lead, and the bounds of the first (which rule out overlong
    // forms, surrogates and what is past U+10FFFF).
    let n: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) n = 1;
    else if (c >= 0xe0 && c <= 0xef) {
      n = 2;
      if (c === 0xe0) lo = 0xa0;
      else if (c === 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
      n = 3;
      if (c === 0xf0) lo = 0x90;
      else if (c === 0xf4) hi = 0x8f;
    } else return i;
    for (let k = 1; k <= n; k++) {
      const x = b[i + k];
      if (x === undefined || x < (k === 1 ? lo : 0x80) || x > (k === 1 ? hi : 0xbf)) return i;
    }
    i += n + 1;
  }
  return null;
}

/**
 * A file's bytes as its text, or the one problem that they are not UTF-8, at the first sequence
 * that is not (its line and column, and its byte offset, which an editor that shows no such byte
 * still finds). Decoded anyway, each became U+FFFD: the file was taken, and the text recorded as
 * its source (an experiment's spec.source) was not its bytes. A BOM is UTF-8, and stays.
 */
export function fileText(bytes: Uint8Array): string | FileProblem {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bad = isUtf8(buf) ? null : firstNonUtf8(buf);
  if (bad === null) return buf.toString('utf8');
  const start = buf.lastIndexOf(0x0a, bad - 1) + 1;
  let line = 1;
  for (let i = buf.indexOf(0x0a); i !== -1 && i < bad; i = buf.indexOf(0x0a, i + 1)) line++;
  const column = buf.subarray(start, bad).toString('utf8').length + 1;
  return { line, column, field: '', message: `not UTF-8 text: byte 0x${buf[bad]!.toString(16).padStart(2, '0')} at offset ${bad} begins no UTF-8 sequence (save the file as UTF-8)` };
}

export function where(ctx: CheckCtx, node: Node | Pair | null | undefined): { line: number; column: number } {
  const range = (node as { range?: [number, number, number] } | null)?.range ?? ((node as Pair | null)?.key as { range?: [number, number, number] } | null)?.range;
  if (!range) return { line: 0, column: 0 };
  const p = ctx.lines.linePos(range[0]);
  return { line: p.line, column: p.col };
}

/**
 * Where the value at `path` (e.g. ['workloads', 0, 'host']) is written in YAML `text`: its line and
 * column, or its nearest written parent's, or 0:0 for a text that does not parse (or is too large
 * or too deep to be read). For problems found after a file was read (a host the cluster up here
 * lacks), so that they carry a place as the reader's own do.
 */
export function fieldPlace(text: string, path: ReadonlyArray<string | number>, maxBytes = 1024 * 1024): { line: number; column: number } {
  if (typeof text !== 'string' || text.length > maxBytes || yamlNestingProblem(text) !== null) return { line: 0, column: 0 };
  const lines = new LineCounter();
  let doc;
  try {
    doc = parseDocument(text, { lineCounter: lines, uniqueKeys: false, prettyErrors: false });
  } catch {
    return { line: 0, column: 0 };
  }
  for (let n = path.length; n > 0; n--) {
    let node: unknown;
    try {
      node = doc.getIn(path.slice(0, n), true);
    } catch {
      node = undefined;
    }
    const range = (node as { range?: [number, number, number] } | null | undefined)?.range;
    if (range) {
      const p = lines.linePos(range[0]);
      return { line: p.line, column: p.col };
    }
  }
  return { line: 0, column: 0 };
}

/** The longest message a problem keeps (the values it names are cut to 40 characters; this bounds the rest). */
export const PROBLEM_MAX_CHARS = 500;

/**
 * Text of a file's as a terminal may show it: control characters (a NUL, an escape sequence, a
 * line break in a quoted value) and the Unicode controls that turn or hide text (U+202E and its
 * kin) written as escapes. A key `"a\u001b[2J"` went to the terminal as it was, and would clear
 * the screen of whoever read the error; a line break in a value made one problem read as two.
 */
export function visibleText(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff]/g, (c) => {
    const n = c.charCodeAt(0);
    return c === '\n' ? '\\n' : c === '\t' ? '\\t' : c === '\r' ? '\\r' : n < 0x100 ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
  });
}

/** Records a problem at `node`: its field and message made visible (visibleText), each at most PROBLEM_MAX_CHARS. */
export function problem(ctx: CheckCtx, node: Node | Pair | null | undefined, field: string, message: string): void {
  const text = visibleText(message);
  const path = visibleText(field);
  ctx.problems.push({
    ...where(ctx, node), field: path.length > PROBLEM_MAX_CHARS ? `${path.slice(0, PROBLEM_MAX_CHARS - 1)}…` : path,
    message: text.length > PROBLEM_MAX_CHARS ? `${text.slice(0, PROBLEM_MAX_CHARS - 1)}…` : text,
  });
}

/**
 * The longest key a problem's field path keeps whole: 64, so that every valid host or VM name (at
 * most 63 characters) is named whole there. An unknown field, a host or a VM name of 100,000
 * characters went whole into the path while the message beside it was cut; then a cut at 40, as
 * shown() cuts a value, cut valid VM names of 40 to 63 characters too.
 */
export const FIELD_KEY_MAX = 64;

/** A key of the file as a problem's field path names it (`hosts.<key>.lps`, `faults[0].<key>`): at most FIELD_KEY_MAX characters. */
export function fieldKey(key: string): string {
  return key.length > FIELD_KEY_MAX ? `${key.slice(0, FIELD_KEY_MAX - 1)}…` : key;
}

export function scalar(node: Node | null): unknown {
  return node && isScalar(node) ? node.value : undefined;
}

/**
 * A value as a problem names it, so that "must be a whole number from 1 to 1000" says what was
 * there: `0`, `1.5`, `1e400` (a number as written), `"7"` (a string, quoted), `nothing`, `a list`,
 * `a map`; at most 40 characters. Every value a problem names goes through it: a name of 900,000
 * characters was quoted whole ("name: "aaaa…" is not valid"), a list named as null.
 */
export function shown(node: Node | null | undefined): string {
  if (node === null || node === undefined) return 'nothing';
  if (isScalar(node)) {
    const v = node.value;
    if (v === null || v === undefined) return 'nothing';
    // A number as it was written: `1e400`, not Infinity; `0x41`, not 65.
    const t = typeof v === 'string' ? JSON.stringify(v) : typeof v === 'number' && node.type === 'PLAIN' && typeof node.source === 'string' ? node.source : String(v);
    return t.length > 40 ? `${t.slice(0, 39)}…` : t;
  }
  if (isSeq(node)) return 'a list';
  if (isMap(node)) return 'a map';
  return 'an alias';
}

/**
 * A seed's value (`node`, whose problem points at `place`): parseSeed of the value as it was
 * written, so a file takes what `--seed` takes (16, 0x10) and refuses what it refuses (1e3, 16.0,
 * a quoted "16"), in the same sentence; null after a problem.
 */
export function seedValue(ctx: CheckCtx, node: Node | null, place: Node | Pair, field: string): number | null {
  const written = node && isScalar(node) && node.type === 'PLAIN' && node.value !== null && typeof node.source === 'string' ? node.source : null;
  const seed = written === null ? null : parseSeed(written);
  if (seed === null) problem(ctx, place, field, seedProblem(written ?? shown(node)));
  return seed;
}

/** How deep a file of hvlab's may nest its collections (its own files need fewer than ten levels). */
export const YAML_MAX_DEPTH = 64;

/**
 * Why `text` nests too deep to be parsed safely, or null. The YAML composer recurses once per
 * level: a 2 KB file of 900 nested brackets took it to the edge of the stack, where V8 ended the
 * whole process instead of throwing (it compiled a regular expression there: "RegExpCompiler
 * Allocation failed"). So the depth is measured first, with the lexer, which does not recurse: an
 * open flow bracket is a level, an indentation deeper than the line above is a level, and each
 * block indicator (`-`, `?`, `:`) outside brackets on a line may be one. That over-counts (`a: b`
 * counts two), never under-counts, and `limit` is far above what any file of hvlab's needs.
 */
export function yamlNestingProblem(text: string, limit = YAML_MAX_DEPTH): string | null {
  /** The flow brackets open, innermost last. */
  const open: string[] = [];
  let lineStart = true;
  let col = 0;
  let extra = 0;
  const indents: number[] = [];
  for (const tok of new Lexer().lex(text)) {
    if (tok === '\n' || tok === '\r\n') {
      lineStart = true;
      col = 0;
      extra = 0;
      continue;
    }
    if (lineStart && /^[ \t]+$/.test(tok)) {
      col = tok.length;
      continue;
    }
    if (lineStart) {
      lineStart = false;
      if (open.length === 0) {
        while (indents.length > 0 && indents[indents.length - 1]! >= col) indents.pop();
        indents.push(col);
      }
    }
    if (tok === '[' || tok === '{') open.push(tok);
    else if (tok === ']' || tok === '}') open.pop();
    // Inside brackets the brackets are the levels: a `:` in braces is a key's, not a deeper level.
    // Counted there too, a file of JSON on one line (as JSON.stringify writes it) with 20 faults was
    // refused as nesting more than 64 levels deep, one level for each of its keys. A pair right in
    // a flow sequence (`[a: b]`) is a map of its own, a level its brackets do not show.
    else if (open.length === 0 ? tok === '-' || tok === '?' || tok === ':' : open.at(-1) === '[' && (tok === '?' || tok === ':')) extra++;
    else continue;
    const depth = indents.length + extra + open.length;
    if (depth > limit) return `it nests more than ${limit} levels deep`;
  }
  return null;
}

/**
 * Reads `text` (YAML, or JSON, which is YAML too) into its root map and a context for problems; or
 * the problems that stop it (too large, not YAML, not a map), each a sentence with its place.
 */
export function readYamlMap(text: string, maxBytes: number, what: { tooBig: string; notMap: string }, opts: { readTags?: boolean } = {}): { ctx: CheckCtx; root: YAMLMap } | FileProblem[] {
  const lines = new LineCounter();
  const ctx: CheckCtx = { problems: [], lines };
  if (typeof text !== 'string' || text.length > maxBytes) return [{ line: 0, column: 0, field: '', message: what.tooBig }];
  const deep = yamlNestingProblem(text);
  if (deep) return [{ line: 0, column: 0, field: '', message: `not a file hvlab reads: ${deep}` }];
  let doc;
  try {
    doc = parseDocument(text, { lineCounter: lines, uniqueKeys: false, prettyErrors: false, strict: true });
  } catch (e) {
    return [{ line: 0, column: 0, field: '', message: `not YAML: ${(e as Error).message}` }];
  }
  if (doc.errors.length > 0) {
    return doc.errors.map((e) => {
      const at = lines.linePos(e.pos[0]);
      // The library's advice to its caller ("please use YAML.parseAllDocuments()") is not the user's.
      if (e.code === 'MULTIPLE_DOCS') return { line: at.line, column: at.col, field: '', message: 'holds more than one YAML document (a second begins here, at ---): one file is one document' };
      return { line: at.line, column: at.col, field: '', message: `not valid YAML: ${e.message.split('\n')[0]!}` };
    });
  }
  // The checkers read each value where it is written: an alias (`*name`) was refused as if it
  // were the wrong type ("vm.workload: must be a workload such as idle, …" for `*w`, where
  // `w` was `&w counter`). Said for what it is, at its place. So is a tag (`!!binary aGk=`,
  // `!!set {a}`, `!foo x`): its value was read as a Buffer, a map or text and named as such ("not
  // hi" for `!!binary aGk=`), and a tag no schema knows was taken as plain text.
  const unread: FileProblem[] = [];
  const cut = (t: string): string => (t.length > 40 ? `${t.slice(0, 40)}…` : t);
  const tagged = (node: Node): void => {
    if (opts.readTags || node.tag === undefined || unread.length >= MESSAGE_MAX_PROBLEMS) return;
    const tag = node.tag.startsWith('tag:yaml.org,2002:') ? `!!${node.tag.slice('tag:yaml.org,2002:'.length)}` : node.tag;
    unread.push({ ...where(ctx, node), field: '', message: visibleText(`a tag (${cut(tag)}) is not read in this file: write the value itself, untagged`) });
  };
  visit(doc, {
    Alias(_, node) {
      if (unread.length < MESSAGE_MAX_PROBLEMS) unread.push({ ...where(ctx, node as unknown as Node), field: '', message: visibleText(`an alias (*${cut(node.source)}) is not read in this file: write the value itself`) });
    },
    Scalar: (_, node) => tagged(node),
    Map: (_, node) => tagged(node),
    Seq: (_, node) => tagged(node),
  });
  if (unread.length > 0) return unread.sort((a, b) => a.line - b.line || a.column - b.column);
  const root = doc.contents as Node | null;
  if (!root || !isMap(root)) return [{ ...where(ctx, root), field: '', message: what.notMap }];
  return { ctx, root: root as YAMLMap };
}
