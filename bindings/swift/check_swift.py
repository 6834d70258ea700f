"""Checks the generated Swift binding without a Swift toolchain: parses it with
tree-sitter-swift (no error nodes) and prints the FFI symbols it calls, one per line.
Usage: python3 check_swift.py engram.swift   (ffi/uniffi/tests/bindings.rs runs it)
"""
import re, sys
import tree_sitter, tree_sitter_swift
# Conditional compilation is resolved first, as a Swift 6 compiler would (tree-sitter-swift
# cannot parse `#if` around attributes); directive lines become blank so line numbers hold.
TRUE = {"swift(>=5.8)", "compiler(>=6)", "canImport(engramFFI)"}
lines, stack = [], []
for line in open(sys.argv[1], encoding="utf-8").read().split("\n"):
    directive = line.strip()
    if directive.startswith("#if "):
        condition = directive[4:].strip()
        if condition not in TRUE:
            sys.exit(f"unknown #if condition: {condition}")
        stack.append(True)
        lines.append("")
    elif directive == "#else":
        stack[-1] = not stack[-1]
        lines.append("")
    elif directive == "#endif":
        stack.pop()
        lines.append("")
    else:
        lines.append(line if all(stack) else "")
source = "\n".join(lines).encode()
parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))
tree = parser.parse(source)
errors = []
def walk(node):
    if node.type == "ERROR" or node.is_missing:
        errors.append(node)
    for child in node.children:
        walk(child)
walk(tree.root_node)
for e in errors[:10]:
    print("parse error at line", e.start_point[0] + 1, file=sys.stderr)
if errors:
    sys.exit(1)
calls = set()
def calls_in(node):
    if node.type == "call_expression":
        name = node.children[0].text.decode()
        if re.fullmatch(r"(uniffi|ffi)_engram_\w+", name):
            calls.add(name)
    for child in node.children:
        calls_in(child)
calls_in(tree.root_node)
print("\n".join(sorted(calls)))
