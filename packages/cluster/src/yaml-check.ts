/**
 * What the checkers of hvlab's YAML files share (topology.ts, experiment.ts): reading the text into
 * its root map with the line of every node, and problems that name the line, the column and the
 * field. A file's checker collects every problem it finds, then throws them together.
 */
import { isMap, isScalar, LineCounter, parseDocument, type Node, type Pair, type YAMLMap } from 'yaml';

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

export function where(ctx: CheckCtx, node: Node | Pair | null | undefined): { line: number; column: number } {
  const range = (node as { range?: [number, number, number] } | null)?.range ?? ((node as Pair | null)?.key as { range?: [number, number, number] } | null)?.range;
  if (!range) return { line: 0, column: 0 };
  const p = ctx.lines.linePos(range[0]);
  return { line: p.line, column: p.col };
}

export function problem(ctx: CheckCtx, node: Node | Pair | null | undefined, field: string, message: string): void {
  ctx.problems.push({ ...where(ctx, node), field, message });
}

export function scalar(node: Node | null): unknown {
  return node && isScalar(node) ? node.value : undefined;
}

/**
 * Reads `text` (YAML, or JSON, which is YAML too) into its root map and a context for problems; or
 * the problems that stop it (too large, not YAML, not a map), each a sentence with its place.
 */
export function readYamlMap(text: string, maxBytes: number, what: { tooBig: string; notMap: string }): { ctx: CheckCtx; root: YAMLMap } | FileProblem[] {
  const lines = new LineCounter();
  const ctx: CheckCtx = { problems: [], lines };
  if (typeof text !== 'string' || text.length > maxBytes) return [{ line: 0, column: 0, field: '', message: what.tooBig }];
  let doc;
  try {
    doc = parseDocument(text, { lineCounter: lines, uniqueKeys: false, prettyErrors: false, strict: true });
  } catch (e) {
    return [{ line: 0, column: 0, field: '', message: `not YAML: ${(e as Error).message}` }];
  }
  if (doc.errors.length > 0) {
    return doc.errors.map((e) => {
      const at = lines.linePos(e.pos[0]);
      return { line: at.line, column: at.col, field: '', message: `not valid YAML: ${e.message.split('\n')[0]!}` };
    });
  }
  const root = doc.contents as Node | null;
  if (!root || !isMap(root)) return [{ ...where(ctx, root), field: '', message: what.notMap }];
  return { ctx, root: root as YAMLMap };
}
