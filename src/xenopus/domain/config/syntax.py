"""xl.cfg syntax: the lexer and parser of the files xl(1) reads (xl.cfg(5)), producing
settings that remember their file and line.

Implemented as libxlu does it (Xen tools/libs/util: libxlu_cfg_l.l is the lexer,
libxlu_cfg_y.y the grammar, libxlu_cfg.c the string escapes and `+=`):

    file    := { [ KEY ("=" | "+=") value ] (NEWLINE | ";") }
    value   := STRING | NUMBER | "[" {NEWLINE} [ item { "," {NEWLINE} item } [","] ] "]"
    item    := value {NEWLINE}
    KEY     := [a-z][._0-9a-z]*
    NUMBER  := [0-9][0-9a-fx]*   converted like strtol(s, NULL, 0): 0x.. hex, 0.. octal
    STRING  := '...' or "..." on one line, with C escapes
    comment := "#" to the end of the line

Deliberate differences from libxlu, each friendlier and none accepting a file xl reads
differently:
- "\\xHH" takes exactly two hex digits and "\\ooo" is octal, as C and libxlu's own
  comments intend (libxlu's strtoul calls reject every \\x and read "octal" as decimal).
- A comment on the last line needs no newline, and CRLF line ends are accepted.
- The first error stops the parse (libxlu recovers at the next line and reports more).
- A command-line override whose value is not valid xl syntax (`name=web1`) is taken as a
  plain string; xl would need `name="web1"`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- errors -------------------------------------------------------------------------


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and line."""


class ConfigSyntaxError(ConfigError):
    """The text is not valid xl.cfg syntax."""

    def __init__(self, filename: str, line: int, message: str) -> None:
        super().__init__(f"{filename}:{line}: {message}")
        self.filename = filename
        self.line = line
        self.message = message


# -- lexer (libxlu_cfg_l.l) -----------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
KEY = re.compile(r"[a-z][._0-9a-z]*\Z")  # libxlu: lowercase, '.' too (xl.conf's vif.default.*)
_NUMWORD = re.compile(r"[0-9][0-9A-Za-z_]*")
# strtol(s, NULL, 0) (C11 7.22.1.4): hex after 0x, octal after a leading 0, else decimal.
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+\Z|0[0-7]*\Z|[1-9][0-9]*\Z")
_PYTHONISH = "+-.():"  # libxlu sets likely_python on these (libxlu_cfg_l.l)

_SIMPLE_ESCAPES = {
    '"': '"', "'": "'", "\\": "\\",
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
}

IDENT, NUMBER, STRING, NEWLINE, EOF = "ident", "number", "string", "newline", "eof"


@dataclass(frozen=True)
class _Token:
    """One token of xl.cfg syntax, with its line."""

    kind: str  # one of the names above, or the punctuation itself: = += ; [ ] ,
    text: str
    line: int
    value: object = None


def _describe(tok: _Token) -> str:
    if tok.kind == NEWLINE:
        return "end of line"
    if tok.kind == EOF:
        return "end of file"
    if tok.kind == STRING:
        return "a string"
    return f"`{tok.text}'"


def to_int(text: str) -> int | None:
    if not _NUMBER.match(text):
        return None
    if text[:2] in ("0x", "0X"):
        return int(text, 16)
    if text.startswith("0"):
        return int(text, 8)
    return int(text)


def _unescape(body: str, filename: str, line: int) -> str:
    """Apply the C escapes libxlu's xlu__cfgl_dequote accepts (libxlu_cfg.c)."""
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        nc = body[i]  # the lexer guarantees a character after every backslash
        i += 1
        if nc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nc])
        elif nc == "x":
            digits = body[i:i + 2]
            if not re.fullmatch(r"[0-9a-fA-F]{2}", digits):
                raise ConfigSyntaxError(
                    filename, line, "invalid hex escape in string: expected \\x and two hex digits")
            out.append(chr(int(digits, 16)))
            i += 2
        elif nc in "01234567":
            m = re.match(r"[0-7]{0,2}", body[i:])
            digits = nc + (m.group() if m else "")
            code = int(digits, 8)
            if code > 0o377:
                raise ConfigSyntaxError(filename, line, f"octal escape \\{digits} out of range")
            out.append(chr(code))
            i += len(digits) - 1
        else:
            raise ConfigSyntaxError(
                filename, line, f"invalid character after backslash in string: `\\{nc}'")
    return "".join(out)


def _tokens(text: str, filename: str) -> list[_Token]:
    toks: list[_Token] = []
    line = 1
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "\n" or (c == "\r" and text[i + 1:i + 2] == "\n"):
            toks.append(_Token(NEWLINE, "\n", line))
            line += 1
            i += 1 if c == "\n" else 2
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end  # the newline itself ends the statement
        elif c in "'\"":
            j = i + 1
            while j < n and text[j] != c and text[j] not in "\r\n":
                j += 2 if text[j] == "\\" and j + 1 < n and text[j + 1] != "\n" else 1
            if j >= n or text[j] != c:
                raise ConfigSyntaxError(filename, line, "unterminated string")
            raw = text[i:j + 1]
            toks.append(_Token(STRING, raw, line, _unescape(raw[1:-1], filename, line)))
            i = j + 1
        elif "0" <= c <= "9":  # libxlu's [0-9]: str.isdigit() would take "²" or "١" too
            word = _NUMWORD.match(text, i).group()  # type: ignore[union-attr]
            value = to_int(word)
            if value is None:
                raise ConfigSyntaxError(filename, line, f"invalid number `{word}'")
            toks.append(_Token(NUMBER, word, line, value))
            i += len(word)
        elif _IDENT.match(text, i):
            word = _IDENT.match(text, i).group()  # type: ignore[union-attr]
            if not KEY.match(word):
                raise ConfigSyntaxError(
                    filename, line,
                    f"invalid name `{word}': names are lowercase letters, digits, '_' and '.',"
                    " starting with a letter")
            toks.append(_Token(IDENT, word, line))
            i += len(word)
        elif text.startswith("+=", i):
            toks.append(_Token("+=", "+=", line))
            i += 2
        elif c in "=;[],":
            toks.append(_Token(c, c, line))
            i += 1
        else:
            msg = f"unexpected character `{c}'"
            if c in _PYTHONISH:
                msg += " (this looks like Python, which xl config files no longer support)"
            raise ConfigSyntaxError(filename, line, msg)
    toks.append(_Token(EOF, "", line))
    return toks


# -- parser (libxlu_cfg_y.y) ------------------------------------------------------------


@dataclass
class Setting:
    """One KEY = VALUE with where it came from (for messages naming file and line)."""

    value: object
    source: str
    line: int
    text: str | None = None  # the source text of a NUMBER atom


class _Parser:
    def __init__(self, text: str, filename: str, settings: dict[str, Setting]) -> None:
        self.toks = _tokens(text, filename)
        self.pos = 0
        self.filename = filename
        self.settings = settings

    @property
    def tok(self) -> _Token:
        return self.toks[self.pos]

    def advance(self) -> _Token:
        tok = self.toks[self.pos]
        self.pos += 1
        return tok

    def error(self, message: str, line: int | None = None) -> ConfigSyntaxError:
        return ConfigSyntaxError(self.filename, self.tok.line if line is None else line, message)

    def skip_newlines(self) -> None:
        while self.tok.kind == NEWLINE:
            self.advance()

    def parse(self) -> None:
        while self.tok.kind != EOF:
            if self.tok.kind in (NEWLINE, ";"):
                self.advance()
                continue
            if self.tok.kind != IDENT:
                raise self.error(f"expected a setting name, got {_describe(self.tok)}")
            key = self.advance()
            if self.tok.kind not in ("=", "+="):
                raise self.error(f"expected `=' after `{key.text}', got {_describe(self.tok)}")
            op = self.advance().kind
            line = self.tok.line
            value, text = self.value(key.text)
            self.store(key.text, op, Setting(value, self.filename, line, text))
            if self.tok.kind not in (NEWLINE, ";", EOF):
                raise self.error(
                    f"expected end of line after the value of `{key.text}',"
                    f" got {_describe(self.tok)}")

    def value(self, key: str) -> tuple[object, str | None]:
        tok = self.tok
        if tok.kind in (STRING, NUMBER):
            self.advance()
            return tok.value, tok.text if tok.kind == NUMBER else None
        if tok.kind == "[":
            return self.list(), None
        if tok.kind in (NEWLINE, EOF, ";"):
            raise self.error(f"missing value for `{key}'")
        raise self.error(f"expected a value for `{key}', got {_describe(tok)}")

    def list(self) -> list[object]:
        opened = self.advance().line
        items: list[object] = []
        self.skip_newlines()
        while True:
            if self.tok.kind == "]":
                self.advance()
                return items
            if self.tok.kind == EOF:
                raise self.error("unterminated list: `[' has no matching `]'", opened)
            if self.tok.kind not in (STRING, NUMBER, "["):
                raise self.error(f"expected a list item or `]', got {_describe(self.tok)}")
            items.append(self.value("list item")[0])
            self.skip_newlines()
            if self.tok.kind == ",":
                self.advance()
                self.skip_newlines()
            elif self.tok.kind == EOF:
                raise self.error("unterminated list: `[' has no matching `]'", opened)
            elif self.tok.kind != "]":
                raise self.error(f"expected `,' or `]' in list, got {_describe(self.tok)}")

    def store(self, key: str, op: str, new: Setting) -> None:
        old = self.settings.get(key)
        if op == "+=" and old is not None:
            # libxlu_cfg.c xlu__cfg_concat_vals: strings concatenate, lists append.
            if isinstance(old.value, int) or isinstance(new.value, int):
                raise self.error(f"can't use += with numbers for `{key}'", new.line)
            if isinstance(old.value, list) != isinstance(new.value, list):
                raise self.error("can't add [list] to \"string\" or vice versa", new.line)
            new.value = old.value + new.value  # type: ignore[operator]
        # A later setting replaces an earlier one: libxlu's find() returns the newest.
        self.settings.pop(key, None)
        self.settings[key] = new


def parse_settings(text: str, filename: str = "<config>",
                   settings: dict[str, Setting] | None = None) -> dict[str, Setting]:
    """Parse xl.cfg text into settings that remember their file and line."""
    out = {} if settings is None else settings
    _Parser(text, filename, out).parse()
    return out


def parse_config(text: str, filename: str = "<config>") -> dict[str, object]:
    """Parse xl.cfg text into raw values: str, int, or (nested) lists of them."""
    return {k: s.value for k, s in parse_settings(text, filename).items()}


# -- command-line overrides ----------------------------------------------------------------

OVERRIDES_SOURCE = "<command line>"


def parse_override(text: str, index: int, settings: dict[str, Setting]) -> None:
    """Apply one `KEY=VALUE` (or `KEY+=VALUE`) from the command line over `settings`, as
    xl appends overrides to the config text; `index` (1-based) is its line in messages."""
    key, sep, raw = text.partition("=")
    op = "="
    if key.endswith("+"):
        key, op = key[:-1], "+="
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"malformed override `{text}': expected KEY=VALUE")
    if not KEY.match(key):
        raise ConfigError(f"malformed override `{text}': `{key}' is not a valid key")
    try:
        parse_settings(f"{key} {op} {raw}", OVERRIDES_SOURCE, settings)
    except ConfigSyntaxError:
        # Not xl syntax (e.g. name=web1): take the value as a plain string.
        _Parser("", OVERRIDES_SOURCE, settings).store(
            key, op, Setting(raw, OVERRIDES_SOURCE, index))
        return
    settings[key].line = index
