"""open_clip's ``SimpleTokenizer`` (CLIP's BPE) written as a ``tokenizer.json`` for ``tokenizers``.

The runtime (:class:`jointembed_pg.model.text.TextTokenizer`) only runs ``tokenizers``, so an
imported open_clip model ships its tokenizer in that format. The pieces mirror
``open_clip/tokenizer.py`` (3.x) step by step:

* cleaning (``clean="lower"``): ``ftfy.fix_text`` -> ``html.unescape`` twice -> strip ->
  whitespace runs to one space -> ``str.lower``. ``tokenizers`` has no ftfy: the normalizer
  does what ftfy does to ordinary text (NFC; curly quotes to straight ones; the Latin
  ligatures and full-width forms it folds; C0/C1 control characters dropped) and unescapes
  the common HTML entities (about 30 named ones and the numeric forms of quotes, ``&``,
  ``<``, ``>``, no-break space; other entities are left as is: rare in captions). The agreement on a
  varied text set is measured in tests/test_model_import.py.
* pre-tokenisation: open_clip's regex ``'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+``
  (matches kept, the rest dropped), then each piece's UTF-8 bytes mapped to printable
  characters (GPT-2's ``bytes_to_unicode``, = ``ByteLevel(use_regex=False)``).
* model: BPE over open_clip's vocabulary (49,408 ids) and merges with the end-of-word
  suffix ``</w>``.
* ``<start_of_text> ... <end_of_text>`` around every caption; padding id 0 (open_clip pads
  with zeros); truncation (by the runtime) keeps ``<end_of_text>`` last, as open_clip does.
"""
from __future__ import annotations

import html.entities
import json

#: open_clip's pre-tokenisation pattern (tokenizer.py), special tokens left out (added tokens).
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
#: What ftfy.fix_text changes in ordinary text (uncurl_quotes, fix_latin_ligatures).
_FTFY_REPLACEMENTS = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl", "\ufb05": "st", "\ufb06": "st",
}


def _entity_replacements() -> list[tuple[str, str]]:
    """``(&name;, char)`` for the HTML entities most captions meet, longest first."""
    common = ("amp", "lt", "gt", "quot", "apos", "nbsp", "ndash", "mdash", "hellip", "lsquo", "rsquo",
              "ldquo", "rdquo", "eacute", "egrave", "agrave", "ccedil", "uuml", "ouml", "auml", "ntilde",
              "copy", "reg", "trade", "deg", "euro", "pound", "times", "middot", "laquo", "raquo")
    numeric = [(f"&#{c};", chr(c)) for c in (39, 34, 38, 60, 62, 160)] + [("&#x27;", "'"), ("&#x2F;", "/")]
    return [(f"&{n};", html.entities.html5[f"{n};"]) for n in common] + numeric


def simple_tokenizer_json(tok) -> str:
    """The ``tokenizer.json`` text equivalent to an open_clip ``SimpleTokenizer`` ``tok``.

    Args:
        tok: ``open_clip.tokenizer.SimpleTokenizer`` with ``clean="lower"`` and no reduction mask.

    Raises:
        ValueError: another cleaning function or a reduction mask (not expressible here).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers import AddedToken

    clean = getattr(tok.clean_fn, "__name__", "")
    if clean != "_clean_lower" or tok.reduction_fn is not None:
        raise ValueError(f"open_clip tokenizer with clean={clean!r} / reduction mask is not supported "
                         f"(only the default lower-casing CLIP tokenizer)")
    ranks = sorted(tok.bpe_ranks.items(), key=lambda kv: kv[1])
    merges = [pair for pair, _ in ranks]
    specials = [t for t, _ in sorted(((t, tok.encoder[t]) for t in tok.cache), key=lambda kv: kv[1])]
    vocab = {t: i for t, i in tok.encoder.items()}
    bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", fuse_unk=False)
    out = Tokenizer(bpe)
    steps = [normalizers.NFC()]
    steps += [normalizers.Replace(a, b) for a, b in _FTFY_REPLACEMENTS.items()]
    # ftfy fix_character_width: full-width ASCII forms and the ideographic space
    steps += [normalizers.Replace(chr(c), chr(c - 0xFEE0)) for c in range(0xFF01, 0xFF5F)]
    steps += [normalizers.Replace("\u3000", " ")]
    steps += [normalizers.Replace(Regex(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]"), "")]  # ftfy remove_control_chars
    for _ in range(2):  # html.unescape(html.unescape(text))
        steps += [normalizers.Replace(a, b) for a, b in _entity_replacements()]
    steps += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    out.normalizer = normalizers.Sequence(steps)
    out.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
    ])
    out.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.BPEDecoder(suffix="</w>")])
    out.add_special_tokens([AddedToken(t, special=True, normalized=True) for t in specials])
    sot, eot = specials[0], specials[1]
    out.post_processor = processors.TemplateProcessing(
        single=f"{sot} $A {eot}", pair=f"{sot} $A {eot} $B:1 {eot}:1",
        special_tokens=[(sot, tok.encoder[sot]), (eot, tok.encoder[eot])])
    out.enable_padding(pad_id=0, pad_token=tok.decoder[0])
    return out.to_str()


def framework_ids(tok, text: str, context_length: int) -> list[int]:
    """open_clip's ids for ``text`` without the zero padding (the reference for agreement)."""
    row = tok([text], context_length=context_length)[0].tolist()
    n = len(row)
    while n and row[n - 1] == 0:
        n -= 1
    return row[:n]


def dumps(obj) -> str:
    """Compact JSON (kept for callers that patch a tokenizer's JSON)."""
    return json.dumps(obj, ensure_ascii=False)
