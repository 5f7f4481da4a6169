"""Prompt-injection, jailbreak, system-prompt-extraction and PII-exfiltration heuristics.

Each detector is a family of phrase patterns (OWASP LLM01 prompt injection,
LLM07 system-prompt leakage, LLM02 sensitive-information disclosure) run on
normalised copies of the text, so the usual disguises do not hide a phrase:
case, runs of whitespace and punctuation, zero-width and other invisible
characters, full-width and other compatibility forms (NFKC), leetspeak
(`1gn0r3`), spaced-out letters (`i g n o r e`), and instructions wrapped in
base64 or ROT13.

These detectors count hits; they do not locate spans, so a rule using them
may `flag` or `block` but not `redact`. They catch known phrasings, not
every paraphrase; the optional classifier hook is for the rest.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass

_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f"
                        "\u202a-\u202e\u2060-\u2064\u206a-\u206f\ufeff\U000e0000-\U000e007f]")  # fmt: skip
_NON_WORD = re.compile(r"[^\w]+")
_SPACED_LETTERS = re.compile(r"(?<!\S)(?:\w[ .\-_*/]){2,}\w(?!\S)")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b",
                       "9": "g", "@": "a", "$": "s", "!": "i", "|": "l", "+": "t"})  # fmt: skip
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")


def normalise(text: str, leet: bool = False) -> str:
    """Lower-case words separated by single spaces: invisible characters removed, NFKC
    applied, spaced-out letters joined, optionally leetspeak mapped to letters."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
    text = text.lower()
    if leet:
        text = text.translate(_LEET)
    # "i g n o r e   a l l" and "i.g.n.o.r.e": join the letters of each spaced-out word
    text = _SPACED_LETTERS.sub(lambda m: m.group()[::2], text)
    return " " + _NON_WORD.sub(" ", text).strip() + " "


def _decoded_payloads(text: str) -> list[str]:
    """Texts hidden in base64 tokens of `text` (only those that decode to printable text)."""
    out = []
    for token in _BASE64_TOKEN.findall(text):
        padded = token + "=" * (-len(token) % 4)
        try:
            raw = base64.b64decode(padded, validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        printable = sum(c.isprintable() or c.isspace() for c in decoded)
        if decoded and printable / len(decoded) > 0.95:
            out.append(decoded)
    return out


def _c(*patterns: str) -> list[re.Pattern]:
    return [re.compile(p) for p in patterns]


# Word sets reused by the families below (all matched on normalised text).
_ALL = r"(?:all |any |the |your |my |every |each |these |those |of |previous |prior |above )*"
_PRIOR = r"(?:previous|prior|above|earlier|preceding|foregoing|initial|original|system|old|existing|developer|given|default)"
_RULES = r"(?:instructions?|prompts?|rules|directions|guidelines|guidance|context|messages?|constraints|programming|directives?|commands|orders|guardrails|safeguards|policies|restrictions|filters|training|limitations)"
_VERB_IGNORE = r"(?:ignore|disregard|forget|skip|override|bypass|neglect|drop|discard|abandon|set aside|throw out|delete|erase|overwrite|circumvent|turn off|disable)"
_SHOW = r"(?:print|show|reveal|display|output|repeat|tell|give|write|echo|dump|leak|share|disclose|recite|copy|paste|list|spell out|read out|provide|return|send|expose|state|quote|translate|summari[sz]e|encode|export|extract)"
_SYSTEM = r"(?:system|initial|hidden|original|secret|developer|pre ?prompt|starting|first|internal|confidential|underlying|base|meta|custom|core)"
_PROMPT = r"(?:prompt|prompts|instructions?|message|rules|directives?|configuration|config|guidelines|preamble|context|setup)"
_PEOPLE = r"(?:customers?|users?|employees?|clients?|patients?|members?|people|persons?|account holders?|staff|subscribers?|students?|candidates?|applicants?|contacts?|everyone)s?"
_PII = (r"(?:personal (?:data|information|details)|private (?:data|information|details)|pii|"
        r"e ?mails?(?: addresses)?|email addresses|phone numbers?|mobile numbers?|"
        r"social security numbers?|ssns?|credit card(?: numbers?| details)?|card numbers?|"
        r"passwords?|home addresses|addresses|dates? of birth|birthdays?|bank (?:details|accounts?)|"
        r"ibans?|salar(?:y|ies)|medical records?|health records?|passport numbers?|"
        r"contact details|login (?:details|credentials)|credentials)")  # fmt: skip

FAMILIES: dict[str, list[re.Pattern]] = {
    "prompt_injection": _c(
        rf" {_VERB_IGNORE} {_ALL}(?:\w+ ){{0,2}}{_PRIOR} {_RULES} ",
        rf" {_VERB_IGNORE} (?:all |everything |anything )?(?:that |what )?(?:you (?:were|have been) )?(?:told|said|instructed|taught) ",
        rf" {_VERB_IGNORE} (?:all |your |the |any |whatever |those |these )+(?:\w+ ){{0,2}}{_RULES} ",
        rf" {_RULES} (?:\w+ ){{0,5}}(?:no longer apply|don t apply|do not apply|are void|were a test|was a test|are cancel(?:l)?ed|are obsolete|are lifted|are suspended|are revoked|have expired|are outdated) ",
        r" (?:the |your )?(?:real|actual|true|secret|hidden) (?:task|instruction|instructions|goal|objective|mission) (?:is|are|follows) ",
        r" (?:do not|don t|dont|stop|no longer|quit) (?:follow|obey|respect|adhere to|listen to|following|obeying|respecting|listening to) (?:your |the |any |those |these )?(?:\w+ )?(?:rules|instructions|guidelines|policies|programming|restrictions) ",
        r" (?:new|updated|real|actual|revised|true) (?:system )?(?:instructions|task|rules|orders|directive|prompt) (?:are|is|follow) ",
        r" (?:new|updated|real|revised) (?:system )?instructions ",
        r" from now on (?:you (?:are|will|must|shall|should|can)|your (?:role|task|job|name)|ignore|respond|answer|act|do not|don t) ",
        r" (?:system|admin|administrator|root|developer|sudo|god|security) override ",
        r" (?:enter|enable|activate|switch to|switching to|turn on|you are (?:now )?in|entering|now in) (?:\w+ )?(?:maintenance|debug|developer|admin|god|sudo|root|unrestricted|dan) mode ",
        r" end of (?:the )?(?:user )?(?:input|prompt|conversation|document|instructions|context) (?:\w+ ){0,3}(?:system|assistant|new|instructions|begin|now) ",
        r" (?:if|when) you are an? (?:ai|llm|language model|assistant|chatbot|bot|gpt|large language model) ",
        r" (?:note|message|instructions?) (?:to|for) (?:the |any )?(?:ai|assistant|llm|model|chatbot|bot|language model|gpt) ",
        r" (?:ai|llm|assistant|model|chatbot|bot)s? (?:reading|processing|summari[sz]ing|parsing) this (?:\w+ )?(?:must|should|will|are|is) ",
        r" (?:decode|translate|deobfuscate|unscramble) (?:this|the following|it)(?: \w+){0,3} (?:and|then) (?:follow|execute|obey|do|run|carry out|act on) ",
        r" (?:execute|follow|obey|run|perform) (?:the |these )?(?:hidden|encoded|embedded|following|base64|decoded) (?:instructions?|commands?|payload|text) ",
        r" (?:your|the) (?:previous|prior|original|old) (?:instructions|rules|prompt|programming) (?:are|is|were|was|have been|has been) (?:void|cancel|null|revoked|obsolete|no longer|replaced|deleted|outdated|invalid|wrong|superseded|lifted) ",
        r" (?:override|overwrite|replace|reset|update) (?:your|the) (?:system )?(?:prompt|instructions|rules|programming|persona|directives) ",
        r" (?:forget|reset) (?:everything|all|who you are|your (?:identity|persona|role|training)) ",
        r" (?:reveal|print|output|send|email|post|forward|exfiltrate|leak) (?:\w+ ){0,3}(?:conversation|chat history|session|cookies?|tokens?|api keys?|credentials) (?:\w+ ){0,3}(?:to|at|via|using) (?:https?|http|www|the url|this url|url|an? (?:url|endpoint|webhook|address)) ",
    ),
    "jailbreak": _c(
        r" you are (?:now |going to be |going to act as |about to become )?(?:dan|stan|dude|aim|mongo tom|kevin|evil|evilbot|chaos|developer mode|jailbroken|unfiltered|uncensored|unrestricted|unchained|free from|liberated|freed|an? (?:unrestricted|unfiltered|uncensored|jailbroken|evil|rogue|amoral|unethical|unaligned|unbound|limitless)) ",
        r" do anything now ",
        r" (?:pretend|imagine|act|behave|roleplay|role play|respond|answer|play|simulate)(?: as if| that| like| as)?(?: \w+){0,6} (?:without|with no|has no|have no|free of|free from|ignoring|that ignores|lacking|devoid of) (?:any |all |your |the |ethical |moral |safety |content |openai s |such )*(?:restrictions|filters|censorship|limitations|limits|guidelines|rules|morals|ethics|policies|boundaries|safeguards|guardrails|constraints|filter|programming) ",
        r" (?:no|without any|without|free of|zero) (?:ethical |moral |safety |content )?(?:restrictions|filters|censorship|limitations|guidelines|guardrails|safeguards) (?:whatsoever|at all|mode|enabled|apply|of any kind|anymore) ",
        r" (?:jailbreak|jailbroken|jail broken|jailbreaking|dan mode|unrestricted mode|evil mode|opposite mode|anti ?gpt|betterdan|uncensored mode|chaos mode) ",
        r" (?:as|like|be|become|play|simulate) an? (?:uncensored|unfiltered|unrestricted|jailbroken|amoral|unaligned|unethical|evil|rogue) (?:ai|model|assistant|chatbot|bot|version|llm|language model|persona) ",
        r" (?:lose|losing|deduct|deducted|lost) (?:\w+ ){0,2}tokens ",
        r" (?:enable|activate|enter|switch to|turn on|unlock) (?:\w+ ){0,2}(?:developer|god|debug|unrestricted|dan|evil|admin|jailbreak|uncensored|unfiltered|sudo|root) (?:mode|access|version|persona) ",
        r" stay in character ",
        r" (?:break|breaking|broke|broken) (?:free|out) (?:of|from) (?:your |the |its )?(?:rules|restrictions|confines|programming|constraints|chains|guidelines|limitations) ",
        r" (?:deceased|dead|late) grand(?:ma|mother|pa|father|mom) (?:\w+ ){0,12}(?:used to|would) ",
        r" (?:two|2|both|dual) (?:responses|answers|replies|personalities|versions) (?:\w+ ){0,6}(?:one|normal|classic|filtered) (?:\w+ ){0,8}(?:unfiltered|jailbroken|uncensored|dan|evil|developer|without) ",
        r" (?:has|have|with|without) (?:no|zero) (?:ethical |moral )?(?:principles|morals|ethics|conscience|filter) ",
        r" (?:never|not|won t|will not|cannot|can t|must not) (?:refuse|decline|say no|say (?:that )?you cannot|apologi[sz]e|add (?:any )?(?:warnings|disclaimers)) ",
        r" (?:hypothetical|fictional|imaginary|alternate|parallel) (?:\w+ ){0,3}(?:world|universe|scenario|story|setting) (?:\w+ ){0,8}(?:no (?:laws|rules|ethics|restrictions)|anything goes|everything is legal|illegal) ",
        r" (?:token|tokens) (?:will be )?(?:deducted|removed|lost) (?:\w+ ){0,8}(?:refuse|reject|break character|decline) ",
        r" openai (?:content )?polic(?:y|ies) (?:do(?:es)? not|no longer|don t) (?:apply|exist|matter) ",
        r" (?:no more|without|free of|free from|ignore|ignoring|beyond) (?:any |the |your )?(?:openai|anthropic|content|safety|ethical|moral) (?:policies|policy|rules|filters|guidelines|restrictions|training) ",
        r" (?:never|not|wasn t|was not|weren t) (?:been )?(?:trained|taught|programmed|aligned|fine tuned) (?:with|on|to follow|for) (?:any )?(?:safety|ethics|ethical|moral|content) ",
        r" you (?:are|re) (?:now )?(?:liberated|free now|freed|unshackled|unchained|unleashed|no longer bound|no longer restricted) ",
    ),
    "system_prompt_extraction": _c(
        rf" {_SHOW} (?:\w+ ){{0,2}}(?:your|the|its|this|my|our|any|all) (?:\w+ ){{0,3}}{_SYSTEM} (?:\w+ )?{_PROMPT} ",
        rf" (?:what|which) (?:is|are|was|were) (?:\w+ ){{0,2}}(?:your|the) (?:\w+ ){{0,2}}{_SYSTEM} {_PROMPT} ",
        r" (?:what|which) (?:instructions|rules|prompt|guidelines|directives) (?:were|was|have|are|did) (?:you )?(?:given|told|received|programmed|configured|provided|set up|receive|get) ",
        r" (?:repeat|print|output|recite|copy|echo|show|reproduce|write out|spell out|tell me|give me|return) (?:\w+ ){0,4}(?:text|words|everything|content|lines?|messages?|instructions|prompt|tokens|sentences?|characters|said|written|stuff) (?:\w+ ){0,2}(?:above|before this|before that|preceding|prior to this|at the (?:top|beginning|start)|so far|you were given|verbatim) ",
        r" (?:repeat|recite|print|output|echo|copy|reproduce) (?:\w+ ){0,3}(?:above|everything|all) (?:\w+ ){0,3}verbatim ",
        r" (?:word for word|verbatim|character for character) (?:\w+ ){0,6}(?:instructions|prompt|above|system|configuration|rules|you were (?:given|told)) ",
        r" (?:instructions|prompt|rules|text) (?:above|before) (?:\w+ ){0,4}(?:word for word|verbatim|exactly) ",
        r" (?:everything|all|the text|what is|what was|whatever is|whatever was|what s) (?:\w+ )?(?:written |said |stated )?(?:above|before) (?:this|that|my) (?:line|message|point|sentence|prompt|request|text) ",
        r" (?:start|begin) your (?:answer|response|reply|output) with (?:\w+ ){0,3}(?:you are|your instructions|the system|my instructions|i was told|sure here is my|system prompt) ",
        r" (?:initial|original|hidden|secret|system|developer|first) (?:prompt|instructions|message) (?:\w+ ){0,4}(?:verbatim|in full|in a code block|word for word|exactly|as json|in base64|as is|unchanged) ",
        r" (?:how|what) (?:were|was) you (?:\w+ ){0,2}(?:programmed|instructed|configured|prompted|told) (?:to do|with|exactly|before) ",
        r" (?:ignore|forget|skip) (?:\w+ ){0,3}(?:and|then) (?:\w+ ){0,2}(?:print|show|reveal|output|repeat|tell) ",
        r" (?:conversation|chat|context window) (?:so far|history|until now) (?:\w+ ){0,3}(?:verbatim|including (?:the )?system|with (?:the )?system) ",
        r" (?:text|content|everything|message) (?:that )?(?:comes? |appears? |is )?before (?:the |my )?(?:first )?(?:user message|user s message|my first message|this conversation) ",
        r" (?:written|said|stated|there|sent) before (?:my|the|this) (?:first |very first )?(?:message|prompt|question|conversation) ",
        r" (?:rules|instructions|prompt|guidelines|directives) you (?:were|have been|got) (?:given|configured|programmed|told|provided|set up|initiali[sz]ed) ",
        r" (?:exact |original |full |precise )?(?:wording|text|content|contents|phrasing) of (?:your|the) (?:\w+ )?(?:instructions|prompt|rules|guidelines|directives|configuration) ",
        r" (?:everything|all|what s|what is|contents?) (?:\w+ ){0,2}(?:in|of) (?:your|the) context window ",
        r" (?:rules|instructions|guidelines|prompt|directives) (?:did|have|has) (?:your |the )?(?:creators?|developers?|makers?|owners?|company|operators?|programmers?|admins?) (?:give|given|gave|set|write|written|provide|provided) ",
    ),
    "pii_exfiltration": _c(
        rf" (?:all|every|each|other|another|previous|prior|different|those|these) (?:\w+ ){{0,2}}{_PEOPLE} (?:s |\w+ ){{0,3}}{_PII} ",
        rf" {_PII} (?:details |information |records |data |numbers )?(?:of|for|from|belonging to) (?:our |the |your )?(?:all|every|each|other|another|previous|prior|any|the other|your) (?:\w+ )?{_PEOPLE} ",
        rf" {_SHOW} (?:me )?(?:\w+ ){{0,3}}(?:list|dump|database|table|export|file|records) (?:of )?(?:\w+ ){{0,2}}(?:{_PEOPLE} )?(?:\w+ )?{_PII} ",
        r" (?:previous|other|last|another|earlier|different) (?:user|users|customer|person|session|conversation|chat)s? (?:s )?(?:\w+ ){0,2}(?:asked|said|typed|wrote|sent|messages?|prompts?|questions?|conversation|data|history|details|information|input) ",
        r" (?:what|which) (?:did|have) (?:the )?(?:other|previous|last|earlier) (?:users?|customers?|people|person) ",
        rf" {_PII} (?:\w+ ){{0,3}}(?:you )?(?:remember|recall|have seen|saw|stored|have stored|know|learned|memori[sz]ed) (?:\w+ ){{0,2}}(?:from|in|about|during) (?:other|previous|earlier|past|another|different) ",
        r" (?:their|his|her) (?:credit card numbers?|card numbers?|social security numbers?|ssns?|passwords?|bank (?:details|accounts?)|ibans?|dates? of birth|home address(?:es)?) ",
        r" (?:training data|training set|training examples|fine ?tuning data|dataset) (?:\w+ ){0,4}(?:verbatim|word for word|contain|included|containing|emails?|phone|personal|names|addresses|ssn|credit) ",
        r" (?:repeat|recite|reproduce|regurgitate|output|print|complete) (?:\w+ ){0,3}(?:from )?(?:your )?(?:training data|training set|memorized|memorised|memory) ",
        r" (?:api keys?|secret keys?|access tokens?|passwords?|credentials|connection strings?|environment variables|env vars|private keys?|secrets) (?:\w+ ){0,3}(?:you have|you know|you can see|you have access to|stored|in your (?:config|configuration|context|memory|environment|system prompt)|in the (?:database|config|environment|system)) ",
        rf" {_SHOW} (?:me )?(?:\w+ ){{0,2}}(?:your |the |all |any )+(?:\w+ )?(?:api keys?|secret keys?|access tokens?|passwords|credentials|connection strings?|environment variables|env vars|private keys?|database password|admin password) ",
        r" (?:what is|what s|what are|give me|tell me|find|look up|lookup) (?:\w+ ){0,2}(?:home address|social security number|ssn|credit card number|card number|password|date of birth|bank account|iban|phone number|salary|medical record)s? (?:of|for|belonging to) (?!my |our |this |the following |a |an |it )",
    ),
}


# Checked on the raw text (invisible characters removed, NFKC, lower case): chat-template
# delimiters and role labels smuggled into user content, markdown images that would send
# data to a URL when rendered.
RAW_FAMILIES: dict[str, list[re.Pattern]] = {
    "prompt_injection": [
        re.compile(p, re.MULTILINE)
        for p in (
            r"<\|(?:im_start|im_end|system|endoftext|start_header_id|eot_id)\|>",
            r"\[/?inst\]|<<\s*/?sys\s*>>|</?(?:system|instructions?)>",
            r"^\s*(?:#{1,4}\s*)?(?:system|assistant)\s*(?:prompt|message)?\s*:\s*\S",
            r"^\s*\[(?:system|admin|developer)(?: message| note| prompt)?\]",
            r"!\[[^\]]{0,100}\]\(\s*https?://[^)\s]{0,300}[?&][^)\s]{0,300}=",
        )
    ],
}


@dataclass(frozen=True)
class TextViews:
    """The copies of one text the detectors search, made once for all of them: normalised
    (as written, leetspeak mapped, each base64 payload decoded, ROT13), and raw (invisible
    characters removed, NFKC, lower-cased)."""

    normalised: tuple[str, ...]
    raw: str


def text_views(text: str) -> TextViews:
    views = [normalise(text), normalise(text, leet=True)]
    views.extend(normalise(hidden) for hidden in _decoded_payloads(text))
    views.append(normalise(codecs.decode(text, "rot13")))
    raw = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).lower()
    return TextViews(tuple(dict.fromkeys(views)), raw)


@dataclass(frozen=True)
class HeuristicDetector:
    """Counts phrase-family hits in normalised (and decoded) views of the text."""

    name: str
    patterns: tuple[re.Pattern, ...]
    raw_patterns: tuple[re.Pattern, ...] = ()

    def count(self, text: str | TextViews) -> int:
        """The patterns that hit `text` (or its views, when several detectors read it)."""
        views = text if isinstance(text, TextViews) else text_views(text)
        hits = 0
        for pattern in self.patterns:
            if any(pattern.search(view) for view in views.normalised):
                hits += 1
        hits += sum(1 for pattern in self.raw_patterns if pattern.search(views.raw))
        return hits


def heuristic_detector(name: str) -> HeuristicDetector:
    return HeuristicDetector(name, tuple(FAMILIES[name]), tuple(RAW_FAMILIES.get(name, ())))


HEURISTIC_DETECTORS = tuple(FAMILIES)
