"""Lexical rules of the feedback gate: which follow-up patterns say something about the previous reply.

Owned here: the rule tables (regexes and short-message lexicons, English first plus common Spanish, French, German,
Portuguese, Italian and Chinese phrasings) and `match_rules`, which returns the first rule that fires as
(kind, confidence, rule name). `hsd_ray.core.feedback.RuleGate` turns that into a decision; the learned gate uses the
hits as features. Precedence (first match wins): short-message lexicon → topic-change opener → code with an error
report → correction → complaint → rephrase → form preference (a standing instruction about the form of replies) →
topic-change cue → clarification → build-on → small talk → positive. Requests to change the
answer itself ("now make it shorter") therefore beat build-on cues ("now ..."), and a positive opener followed by a
new request ("great, now write a poem about it") is build-on, not praise.

Confidence is the rule's own estimate that the follow-up is feedback (near 1 for feedback rules, near 0 for
not-feedback rules); it was set by hand from what each pattern means, not fitted. Pure: stdlib only.
"""

from __future__ import annotations

import re
import unicodedata

# Short whole-message lexicon (after normalisation: lower case, trailing punctuation/emoji stripped, except "?").
SHORT: dict[str, tuple[str, float]] = {}
for _w in ("ok", "okay", "k", "kk", "okk", "okie", "alright", "sure", "got it", "i see", "fine", "yes", "yeah", "yep",
           "hmm", "hm", "mhm", "oh", "ah", "cool", "noted", "vale", "d'accord", "dac", "ok merci", "好", "好的", "嗯",
           "entendi", "verstehe", "alles klar", "ja", "sí", "si", "oui", "sim"):
    SHORT[_w] = ("ack", 0.12)
for _w in ("continue", "go on", "more", "keep going", "next", "and", "and?", "then?", "go ahead", "proceed", "more please",
           "continue please", "please continue", "weiter", "continúa", "sigue", "continue stp", "continua", "继续", "more examples",
           "part 2", "next one", "next step", "and then?"):
    SHORT[_w] = ("build_on", 0.08)
for _w in ("?", "??", "???", "what?", "huh?", "huh", "why?", "why", "how?", "meaning?", "what", "wdym", "wdym?", "eh?",
           "¿qué?", "quoi ?", "quoi?", "wie bitte?", "什么?", "什么？", "为什么?", "为什么？", "como assim?", "por qué?"):
    SHORT[_w] = ("clarification", 0.85)
for _w in ("no", "nope", "nah", "wrong", "incorrect", "not quite", "not really", "false", "nein", "falsch", "faux", "non",
           "incorrecto", "errado", "sbagliato", "不对", "错了", "不是", "lol no", "no.", "try again", "again", "redo",
           "retry", "shorter", "simpler", "sure?", "boring", "really?", "shorter please", "too long", "tl;dr", "tldr", "too long didn't read", "meh", "useless", "yes or no"):
    SHORT[_w] = ("negative", 0.9)
for _w in ("thanks", "thank you", "thx", "ty", "tysm", "thanks!", "perfect", "great", "awesome", "excellent", "nice",
           "brilliant", "amazing", "wonderful", "correct", "exactly", "that works", "works", "it works", "worked",
           "that worked", "good answer", "great answer", "nice one", "spot on", "gracias", "merci", "danke", "obrigado",
           "obrigada", "grazie", "谢谢", "多谢", "perfecto", "parfait", "perfekt", "perfeito", "genial", "super", "top",
           "thanks a lot", "many thanks", "thank u", "love it", "this is great", "that's perfect", "much appreciated", "neat", "👌",
           "👍", "🙏", "helpful", "very helpful", "makes sense", "that makes sense", "right", "yes exactly", "bingo"):
    SHORT[_w] = ("positive", 0.9)

_NEG_SHORT_KIND = {"no": "correction", "nope": "correction", "wrong": "correction", "incorrect": "correction",
                   "false": "correction", "nein": "correction", "falsch": "correction", "faux": "correction",
                   "non": "correction", "incorrecto": "correction", "errado": "correction", "sbagliato": "correction",
                   "不对": "correction", "错了": "correction", "不是": "correction", "no.": "correction",
                   "try again": "rephrase", "again": "rephrase", "redo": "rephrase", "retry": "rephrase",
                   "shorter": "rephrase", "simpler": "rephrase", "shorter please": "rephrase"}

_F = re.IGNORECASE


def _rx(*parts: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in parts), _F)


CODE_RX = re.compile(r"```|^\s{4,}\S|\b(def|class|return|import|const|let|var|function|public|void|SELECT|FROM)\b.*[(){};=:]"
                     r"|[{};]\s*$|=>|\w+\(.*\)\s*[;:{]?\s*$|</?\w+>|#include", re.MULTILINE)
ERROR_RX = _rx(r"\b(error|exception|traceback|stack ?trace|segfault|undefined|nullpointer|not defined|cannot|can't find)\b",
               r"\b(doesn'?t|does not|didn'?t|did not|won'?t|still (doesn'?t|does not|fails?))\s+(work|compile|run|build|help)",
               r"\b(fails?|failed|crash(es|ed)?|broken|throws?|raises?)\b", r"\bsyntax ?error\b", r"\bTypeError|ValueError|KeyError")

CORRECTION_RX = _rx(
    r"^(no|nope|nah|wrong|incorrect|actually|not true|false)\b(?!\s+(thanks|thank|worries|problem|need|rush|way))[\s,.!:;-]",
    r"\b(that'?s|that is|this is|it'?s|it is|you'?re|you are|your answer is|the answer is)\s+(not\s+)?(wrong|incorrect|"
    r"false|inaccurate|mistaken|not (right|correct|true|accurate))", r"\bshould (be|have been)\b.*\bnot\b",
    r"\bisn'?t it\b", r"\bi (think|believe) (you'?re|you are|that'?s|it'?s) (wrong|mistaken|incorrect)",
    r"\byou (made|have) (a|an) (mistake|error|typo)", r"\b(it|that|this) (is|was) actually\b", r"\bthere(?:'s| is) no such\b",
    r"\bthat'?s not (how|what|true|right|correct)\b", r"\bdoesn'?t exist\b", r"\byou (mixed|confused)\b",
    r"\b(that'?s|it'?s|this is) (a myth|outdated|out of date|not accurate)\b", r"\bi'?m pretty sure\b|^pretty sure\b",
    r"(^|[,;.]\s*)(it|that|this|the \w+|which)? ?should (be|have been|come|say)\b", r"\b(is|was|are|were) actually\b",
    r"\bno longer\b|\bnot anymore\b", r"\b(your|the) (\w+ ){1,2}(is|was|are|were) (wrong|incorrect|inaccurate|not (right|correct))\b",
    # es / fr / de / pt / it / zh
    r"\b(no es (correcto|cierto|así)|está mal|es incorrecto|te equivocas|c'?est faux|pas (correct|vrai|juste)|"
    r"tu te trompes|ce n'?est pas (ça|correct|vrai)|das (ist|stimmt) (falsch|nicht)|stimmt nicht|ist falsch|"
    r"está errad[oa]|não é (isso|verdade|correto)|você errou|è sbagliat[oa]|non è (corretto|vero))\b",
    r"不对|错了|是错的|不正确|搞错|说错", r"неправильно|неверно|это не так|^нет\b")

COMPLAINT_RX = _rx(
    r"\btoo (long|short|verbose|wordy|complicated|complex|technical|vague|generic|formal|informal|much|many|basic|simple|"
    r"robotic|repetitive|detailed|dense|long-winded)\b", r"\b(way|far|much) too\b",
    r"\b(stop|quit|don'?t|do not|please don'?t|never) (us(e|ing)|add(ing)?|say(ing)?|includ(e|ing)|put(ting)?|"
    r"apologi[sz](e|ing)|repeat(ing)?|giv(e|ing) me)\b", r"\bi (said|asked|told you|specifically|explicitly|wanted|meant|"
    r"just wanted|only wanted|only asked)\b", r"\bnot what i (asked|wanted|meant|need(ed)?|said)\b",
    r"\byou (didn'?t|did not|don'?t|forgot|missed|ignored|keep|still|never|just repeated|misunderstood|misread|completely)\b",
    r"\b(doesn'?t|does not|didn'?t|did not|won'?t) (answer|help|make sense|address|work|handle|account for|cover|support|consider|include|mention)\b", r"\bmakes no sense\b",
    r"\bare you sure\b", r"\b(i )?already (do|did|tried|have|know|read|saw|use|said|told)\b|^(read|seen|tried|done) (it|that|this|all)",
    r"\b(it'?s|they are|they'?re|they were|it was|was|were|is|are) still\b", r"\byou (should|could) have\b",
    r"\b(way off|unrealistic|not realistic|doesn'?t sound right|sounds? (fake|wrong|off|weird|robotic)|generic|clich[ée]|boring|cringe|oversimplified|too much|not enough)\b", r"\b(don'?t|do not|stop) (make up|making up|invent|inventing|lie|lying)\b",
    r"\b(doesn'?t|does not|don'?t|didn'?t) (apply|fit|match)\b", r"\b(doesn'?t|does not|didn'?t) (compile|run)\b", r"\b(useless|unhelpful|not helpful|not useful|nonsense|gibberish|rambling|word salad)\b",
    r"\bwhy (did|would) you\b", r"\bwhere (is|are) the\b.*\b(i asked|you)\b", r"\bthat'?s not (it|helpful|useful)\b",
    r"\bread (my|the) (question|message|prompt)\b", r"\b(yes or no|one word|one sentence) only\b", r"\bno emojis?\b",
    r"\b(what|how) (is|does) (this|that) (answer|help)\b", r"\bso many (emojis|words|bullet)\b", r"\bugh\b", r"\bwtf\b",
    r"\bdemasiado \w+|trop \w+|zu (lang|kurz|kompliziert|formell|schwer|viel)|muito (longo|complicado|difícil)|troppo \w+|"
    r"ya te (lo )?dije|je (te l'?ai|t'?ai) (déjà )?dit|ich (habe|hab) (dir )?(doch )?(schon )?gesagt|eu (já )?disse|te l'?ho detto|"
    r"no (es|era) lo que (pedí|pregunté)|ce n'?est pas ce que j'?ai demandé|"
    r"nicht (das|was) ich (gefragt|wollte)|não foi isso que (pedi|perguntei)|no me sirve|sers? à rien|hilft nicht",
    r"слишком \w+|太长|太短|太复杂|啰嗦|没用|不是我问的|我说了|我问的是|你没|你忘了|没考虑",
    r"\b(this|that|it|you) (misses|missed|forgot|ignores|ignored|skips|skipped)\b", r"\bnot working\b",
    r"\b(double[- ]?check|re-?check|proof-?read)\b.{0,10}\b(your|the|that|this|it)\b",
    r"\b(skip|drop|leave out|ditch|cut out|lose) (the|all the|those|these|that|your) [\w' ]{1,30}(next time|from now on|"
    r"in (the )?future|going forward)\b",
    r"^(from now on|next time|in (the )?future|going forward),? (skip|drop|leave out|ditch|cut out|lose|no|don'?t|never)\b",
    # another form suggested for this reply: "a table would make this clearer", "an example would have helped"
    r"^(a |an )?(numbered |bulleted |bullet |short |quick )?(list|table|tables|headings?|headers?|bullets|bullet points|"
    r"summary|tl;?dr|diagram|example|examples|steps|code( block)?|chart)( for each \w+)? (would|might|could) (be|make|"
    r"have been|have made|have helped|help|read)\b",
    # "ask me about my income first", "ask me what the budget is next time before listing"
    r"^(please )?(ask|check with) me (about|what|how|for|if|whether|which)\b.{0,60}\b(first|before|next time)\b")

# What a redo imperative's object must be for the message to be about the reply: the reply, or a part of it.
REPLY_PART = (r"(it|that|this|them|everything|the whole thing|(the |each |every |all (the )?)?((most important|\w+) )?"
              r"(answer|reply|response|text|list|steps?|points?|sections?|paragraphs?|sentences?|definition|formula|"
              r"code|syntax|examples?|result|conclusion|summary|bottom line|thesis( statement)?|ingredients|quantities|"
              r"keywords|names?|numbers?|headings?|title|intro(duction)?|terms?|words?|facts?|ideas?|takeaways?|"
              r"concepts?|causes?|reasons?|tips|options|items|bullets?|one))")
REPLY_QUALITY = (r"(specific|precise|concrete|detailed|concise|clear|direct|brief|formal|casual|creative|thorough|"
                 r"accurate|technical|simple|friendly|polite|professional|enthusiastic|objective|balanced|critical|"
                 r"scary|dramatic|serious|funny|playful|harsh|blunt|gentle|firm|assertive|confident|wordy|verbose|"
                 r"academic|personal|original|practical|structured|organi[sz]ed|nuanced|persuasive|natural)")

REPHRASE_RX = _rx(
    r"\b(try|do it|one more time|once more) again\b", r"\btry (another|a different)\b", r"\b(re-?write|re-?do|re-?phrase|"
    r"re-?word|simplify|shorten|condense|summari[sz]e) (it|that|this|your (answer|reply|response)|the (answer|reply|text))\b",
    r"\b(say|explain|put) (it|that|this) (again|more simply|simpler|differently|in (simpler|plain|other|fewer)|like i'?m)\b",
    r"\b(make|keep) (it|that|this|them|the (answer|reply|text|code|list|steps|sentences|paragraphs|points|"
    r"examples))\s+(shorter|simpler|longer|clearer|more|less|briefer|"
    r"concise|easier)\b", r"^(shorter|simpler|briefer|more concise|less formal|more formal|in plain english|plain english|"
    r"smaller|bullet points|fewer words|less words)\b", r"\bin simpler (terms|words)\b", r"\beli5\b", r"^(please )?(mention|remove|include|drop|cut|delete|change|replace|swap|add|less) \w+",
    r"^again\b", r"^(please )?(re-?write|re-?do|re-?phrase|re-?word|simplify|shorten|expand|elaborate on|improve|polish|revise|edit) (it|that|this|the|your|my|above|again|point)\b", r"\b(make|change|edit|revise|improve) (it|that|this|the above|the (story|text|poem|code|essay|email|letter|answer|list|function)) (longer|shorter|more|less|simpler|clearer|funnier|better|sound)\b",
    r"^(more|less|a bit more|a little more|much more) (detailed|detail|details|concise|formal|casual|professional|specific|simple|technical|polite|friendly)\b",
    # bare redo imperatives with no complaint word: "be more specific", "be firmer", "bold the key terms". The verbs
    # also start new tasks ("highlight the differences between TCP and UDP", "be less afraid of ..."), so the object
    # must be the reply or a part of it (REPLY_PART) and the quality one the reply can have (REPLY_QUALITY).
    rf"^((please|pls|just|can you|could you|would you|try to) )?(be|sound) (a (bit|little|lot) |much |way |even )?"
    rf"(more|less) {REPLY_QUALITY}\b", r"^((please|pls|just) )?be (firmer|clearer|shorter|briefer|simpler|nicer|kinder|"
    r"harsher|stricter|gentler|softer|bolder|blunter|friendlier|funnier|warmer|tighter|crisper|plainer)\b",
    r"^(be )?(more )?(specific|specifics|concrete|precise)(,? (please|pls|plz))?([.!,;:]|$)",
    r"^((please|can you|could you) )?(write|say|put|type|give|redo|do) (it|that|this|them|everything|the (whole thing|"
    r"answer|reply|list|steps))( all| again| both)? (in|as|with|using|without|into) (all |small |capital |plain |"
    r"simple |simpler |short |bold )?(lower ?case|upper ?case|caps|capitals|small letters|capital letters|bold|italics|"
    r"bullets?|bullet points|plain text|markdown|simple words|simpler words|short sentences|fewer words|a (table|list|"
    r"numbered list|rhyme|single sentence|code block))\b",
    rf"^((please|can you|could you) )?(bold|highlight|italici[sz]e|underline|number|capitali[sz]e|bullet|label|"
    rf"indent|format) {REPLY_PART}\b",
    r"^((please|can you|could you) )?use (more|fewer|less|simpler|plainer|easier|shorter|longer|simple|plain|everyday) "
    r"(words|language|terms|sentences|english|detail|details|examples?)\b"
    r"(?! to (?!(explain|say|write|describe) (it|that|this|them)\b)\w+)",
    rf"^((please|can you|could you) )?(put|give( me)?|start with|lead with|open with|begin with) {REPLY_PART} "
    rf"(first|at the top|up front|upfront)\b",
    r"m[áa]s (espec[íi]fic[oa]|concret[oa]|clar[oa]|direct[oa]|precis[oa])|plus (pr[ée]cis|concret|clair|direct)|"
    r"\b(genauer|konkreter|pr[äa]ziser)\b|fett (markieren|machen|schreiben)|mais (espec[íi]fico|direto|claro|concreto|"
    r"preciso)|pi[ùu] (specifico|preciso|chiaro|diretto)|具体一点|更具体|说具体|"
    r"(écri[st]|écrivez|escribe|escreva|schreib)\w* (tout |todo |tudo |alles )?(en|in|em) (minuscules|min[úu]sculas|"
    r"kleinbuchstaben|majuscules|may[úu]sculas|mai[úu]sculas)",
    r"^(it|this|that|the \w+) (needs to|has to|should|must)\b", r"\b(one|single)[- ]word answer\b", r"\b(can|could|would) you (make|put|turn|format|write|give|show|do) (it|that|this|them) ?(as|in|into)? (a |an )?(table|list|bullets?|bullet points|timeline|steps|numbered list|one sentence|one paragraph|one line|shorter|simpler)\b", r"\blike i'?m (5|five|a)\b",
    r"\bcan you (simplify|shorten|rephrase|reword|condense|redo|fix)\b", r"\b(give me|just give me) (just )?(the (answer|code|"
    r"number|result|short version)|a (shorter|simpler|clearer|better) (version|answer|one))\b", r"\bwithout (the |all the |any )?(emojis?|"
    r"jargon|buzzwords|bullet|fluff|intro|explanation|preamble|disclaimer)", r"\b(shorter|simpler|clearer|better) (version|answer|please)\b",
    r"\b(just|only) (the|give me the) (code|answer|number|name|list)\b", r"\bfix (it|that|this|the (code|bug|error))\b",
    r"\bmás (corto|simple|sencillo)|otra vez|de nuevo|inténtalo|plus (court|simple)|réessaie|reformule|encore une fois|"
    r"kürzer|einfacher|nochmal|noch einmal|mais (curto|simples)|tente de novo|simplificar|simplifier|vereinfachen|più (breve|semplice)|riprova",
    r"简短|短一点|简单点|简单一点|重新|再试|换个说法|再说一遍|короче|проще|перепиши")

TOPIC_RX = _rx(r"\b(by the way|btw|unrelated|different (question|topic)|another question|new question|change of topic|"
               r"changing (the )?(subject|topic)|on another note|random question|off topic|quick question|separate (question|thing)|something else|switching gears|different note|enough \w+ for (today|now))\b",
               r"\b(por cierto|otra pregunta|au fait|autre question|übrigens|andere frage|aliás|outra pergunta|a proposito)\b",
               r"顺便|另外一个问题|换个话题")

CLARIFY_RX = _rx(
    r"\bwhat (do|did) you mean\b", r"\bwhat does (that|this|it|\"?[\w' -]{1,30}\"?) mean\b", r"\bwhat'?s (that|this) mean\b",
    r"\bi (don'?t|do not|didn'?t|did not|still don'?t) (understand|get|follow)\b", r"\b(confus(ed|ing)|unclear|not clear)\b",
    r"(?<!like )(?<!as )\byou (said|mentioned|wrote|say)\b", r"^wait\b", r"\breally\?",
    r"\bwhat (does|do) (?!i |you |we |they )(the |this |that )?[\w'$^ -]{1,30} (do|stand for)\b", r"\bwhat\b[^.?]{0,40}\bmean\b", r"\byour (answer|reply|response|explanation|last|previous|example|code|step)\b",
    r"\bwhich is it\b", r"\bcan you (clarify|explain what you meant)\b", r"\bwhat is (that|this) supposed to\b",
    r"\bmeaning\b.*\?", r"\bhow (so|come)\b", r"\bwhy is that\b", r"\bwhere did you get\b", r"\bsource\?",
    r"\bqué quieres decir|qu'?est-ce que (tu veux|vous voulez) dire|was meinst du|was bedeutet|o que (você )?quer dizer|"
    r"qué significa|que veut dire|was heißt|o que significa|cosa significa|no entiendo|je ne comprends pas|ich verstehe (das )?nicht|não entendi|non capisco|cosa intendi",
    r"什么意思|不明白|没听懂|看不懂|不懂")

BUILD_RX = _rx(
    r"^(ok(ay)?|great|thanks|thank you|cool|nice|perfect|awesome|good|alright|got it)?[\s,.!]*(now|next|also|then|and now|"
    r"and also|additionally)\b", r"^[^.!?,]{0,25}[.!,]\s*(now|next|also|and now)\b", r"^(what|how) about\b", r"^(and|but) (what|how) about\b", r"^what if\b",
    r"\b(can|could|would) you (also|now)\b", r"\btranslate (it|this|that|them)\b", r"\bin (french|spanish|german|chinese)\b.*\?$",
    r"\b(more|another|other|a few more) (examples?|ideas?|options?|suggestions?|recipes?|ones?|questions?)\b",
    r"\b(write|make|create|generate|compose|draft) (a|an|me a|me an) (poem|song|story|haiku|tweet|summary|email|quiz|"
    r"table|outline|letter|limerick)\b", r"\bnext (step|part|chapter|question)\b", r"\bcontinue\b", r"^(and|so) (then|after)\b",
    r"\bahora\b|\bmaintenant\b|\bjetzt\b|\bagora\b|\bet (pour|si)\b|\by (qué|si)\b|然后|接下来|再来")

SMALLTALK_RX = _rx(r"^(hi|hello|hey|good (morning|night|evening)|how are you|how'?s (your|it going)|are you (a bot|human|an ai)|"
                   r"who (made|created) you|lol|haha|what'?s your name|do you like|bye|see you|good ?night)\b",
                   r"\bno (thanks|thank you|worries|problem)\b", r"^(hola|bonjour|hallo|olá|你好)\b")

POSITIVE_RX = _rx(
    r"^(thanks|thank you|thx|ty|tysm|many thanks|perfect|great|awesome|excellent|nice|brilliant|amazing|wonderful|fantastic|"
    r"exactly|correct|spot on|love (it|this)|this is (great|perfect|exactly)|that'?s (great|perfect|exactly|right|correct|it|"
    r"helpful)|you'?re (right|correct|a lifesaver)|cheers)\b", r"\b(that|this|it) (worked|works|helped|did the trick|fixed it|"
    r"was (very |really )?(helpful|useful|clear))\b", r"\b(great|good|perfect|excellent|nice|clear|helpful) (answer|"
    r"explanation|job|work|summary|response)\b", r"\bexactly what i (needed|wanted|was looking for)\b", r"\bmakes (total |)sense\b",
    r"(?<!n't )(?<!not )(?<!never )\b(worked|works (perfectly|great|now|fine|like a charm))\b(?! for)",
    r"^(wow |oh |ok |okay )?(that'?s |thats |this is |it'?s |so |very |really |super )*(beautiful|clear|helpful|useful|great|perfect|amazing|awesome|brilliant|much better|lovely|spot on)\b", r"\byou'?re (a legend|a lifesaver|a genius|the best)\b",
    r"^(that was it|that'?s it|that did it)\b", r"^(the|this|that|it)( [\w']+){0,2} (is|are|was|looks?) (so |really |very )?(good|great|cute|nice|fine|perfect|right|correct|helpful)\b", r"\b(matches|same as) (my|the) (answer|result|book|key)",
    r"\bmuy (útil|bien)|sehr (hilfreich|gut)|ficou ótimo|c'?est clair|valeu|très utile|molto utile|太棒",
    r"\bmuchas gracias|merci beaucoup|vielen dank|muito obrigad|grazie mille|c'?est parfait|genau|funktioniert|funcionó|"
    r"ça marche|funcionou|太好了|非常感谢|有用|明白了|懂了",
)

THANKS_RX = _rx(r"\b(thanks|thank you|thx|ty|gracias|merci|danke|obrigad[oa]|grazie|valeu|cheers)\b", r"谢谢|感谢|спасибо")
WHY_WHAT_RX = _rx(r"^(why|how come|pourquoi|por qué|warum|por que|perché|为什么)", r"^what('?s| is| are| does| do)\b",
                  r"^[\w -]{1,25}\?$")

# Standing instructions / preferences about the form of replies: a form word AND an instruction/preference cue, in a
# message of at most FORM_MAX_WORDS words that does not open with a new task ("write a haiku ..., all lowercase").
# "from now on" / "next time" / "I prefer" alone never fire ("from now on call me Sam", "next time I'll ask about Rome").
FORM_WORD_RX = _rx(
    r"\b(your|all|every|each|future|these|those) (answers?|repl(y|ies)|responses?|messages?|emails?|code)\b",
    r"\b(in|with|for|to|from) (answers|replies|responses|messages)\b",
    r"\b\d+ (words?|sentences?|lines?|characters?|chars|paragraphs?|bullets?|bullet points?|points)\b",
    r"\b(brief|briefer|briefly|concise|succinct|short and sweet|to the point|wordy|verbose|long-winded|one[- ]liners?|"
    r"tl;?dr|wall of text)\b", r"\b(short|shorter|long|longer) (answers?|repl(y|ies)|responses?|version|ones|mails?|emails?)\b",
    r"\b(one|a|single|two|three) (sentence|line|paragraph|word)s?\b", r"\b(the )?(word|number|name|code( block)?) only\b",
    r"\byes\b.{0,12}\bor\b.{0,12}\bno\b", r"\byes/no\b", r"\b(a|simple|plain) (yes|no)\b",
    r"\b(markdown|bullet(ed)? ?(points?|lists?)?|bullets|numbered( lists?| steps)?|lists?|headings?|headers?|bold|"
    r"italics?|formatting|formatted|code blocks?|prose|paragraphs?|plain text|line breaks|asterisks|hashtags|title)\b",
    r"\b(a|as a|in a|into a|as|in) tables?\b|\btables? (format|instead)\b",
    r"\b(lower ?case|upper ?case|capital letters?|capitals|capitali[sz]\w*|all caps|caps)\b",
    r"\b(emojis?|emoji|emoticons?|smileys?)\b",
    # how replies address the user ("use my name", "address me by name"); telling a name alone ("call me Priya") is not
    r"\b(use|say|using|saying|mention|include)( my)? (first )?name\b|\b(address|call|refer to) me (by|with)\b|"
    r"\bby (my )?(first )?name\b",
    r"\b(formal|informal|casual|relaxed|friendly|polite|stiff|tone|jargon|slang|professional|dry|playful|funny|jokes?|"
    r"cheerful|serious|enthusiastic|exclamation (marks?|points?)|sarcas\w*|condescending|patroni[sz]\w*|hedg\w*|rhym\w*|"
    r"free verse)\b",
    r"\b(sign[- ]?offs?|sign (it|them|these|your|each|every|off)|signature|greeting|salutation)\b",
    r"\b(end|start|begin|open|close|finish)(ing|s)? (each|every|all|your|the|with)\b",
    r"\b(in|into) (plain |simple |simpler )?(english|spanish|french|german|italian|portuguese|chinese|japanese|russian|"
    r"dutch|korean|arabic|hindi)\b", r"\b(british|american|us|uk) (spelling|english)\b",
    r"\b(explanations?|details|preamble|intro(duction)?s?|opener|disclaimers?|caveats?|apolog\w*|fluff|"
    r"filler|pleasantries|great question|backstory|history lesson|summary|recap|sources|citations?|romaji|"
    r"transliteration|type hints?|comments|docstrings?)\b",
    r"\b(metric|imperial|celsius|fahrenheit|units|grams)\b",
    r"respuestas?|r[ée]ponses?|antworten?|respostas?|rispost[ae]|corto|cortas?|breve|kurz|courts?|courtes?|curt[ao]s?|"
    r"listas?|listes?|listen|viñetas|puces|aufzählung\w*|minúsculas|minuscules|kleinbuchstaben|maiúsculas|tabelle|"
    r"tabla|tableau|emoticonos|sí o no|oui ou non|ja oder nein|sim ou não|sì o no|rimes?|reime?|explicaci[oó]n|"
    r"explica[çc][ãa]o|spiegazion\w+|erklärung\w*|en (español|inglés)|en (français|anglais)|auf (deutsch|englisch)|"
    r"em portugu[eê]s|in (italiano|inglese)|só a palavra",
    r"简短|简洁|表情|列表|要点|格式|中文|英文|小写|字以内|回答|是或否|选项|коротк|смайл|эмодзи|списк|ответ")
FORM_CUE_RX = _rx(
    r"\b(from now on|next time|in (the )?future|going forward|henceforth|from here on|moving forward|for future)\b",
    r"\b(always|never|every time|each time|anymore|any more)\b",
    r"\b(stop|quit|enough( with)?|no more|cut (out|back on)|lay off|less|fewer|ditch|drop|lose|skip|avoid|get rid of|"
    r"without|leave out|instead)\b",
    r"\bi('d| would| really| honestly| much| strongly| actually)? ?(prefer|like|love|hate|want|need|only need|"
    r"only want|just need|just want|rather|can'?t stand|don'?t like|dislike|don'?t need|don'?t want|enjoy|find|"
    r"read these|present)\b", r"\b(please|pls|plz|per favore|por favor|s'il (te|vous) pla[iî]t|bitte)\b",
    r"\b(just|only|simply|nothing else|nothing more|is plenty|is enough|all i'?m after|is all i)\b",
    r"\bno need\b|\bdon'?t (need|bother)\b|(^|[,.;:!]\s*)no\b",
    r"\b(can|could|would|will) you (please )?(keep|be|use|answer|reply|respond|write|stop|not|avoid|skip|drop|add|"
    r"include|put|sign|end|start|format|switch|stick|sprinkle|cut|tone|talk|sound|speak|lose)\b",
    r"^(keep|be|use|add|include|answer|reply|respond|give|put|sign|end|start|finish|format|switch|stick|cap|limit|"
    r"avoid|skip|drop|lose|cut|tone|less|fewer)\b",
    r"\bwhere('s| is| are| did| have)\b.{0,20}\b(go|gone|the)\b|\bwhat happened to\b",
    r"\b(like|as) (we|i) (agreed|said|asked|discussed)\b|\bremember\b|\btoo\b|\bnot (enough|so)\b|\b(should|must|need to|has "
    r"to|have to) (be|use|have|include|end|start|stay)\b|\bwould fit better\b|\bkeep doing\b|\bmax\b",
    r"a partir de ahora|la pr[oó]xima vez|en (el )?futuro|siempre|prefiero|solo|s[oó]lamente|sin\b|[àa] l'avenir|"
    r"d[ée]sormais|la prochaine fois|dor[ée]navant|toujours|je pr[ée]f[èe]re|seulement|sans\b|pas de\b|in zukunft|ab jetzt|"
    r"n[äa]chstes mal|k[üu]nftig|immer|ich (m[öo]chte|h[äa]tte lieber|bevorzuge)|\bnur\b|\bohne\b|daqui (pra|para) frente|"
    r"a partir de agora|da pr[óo]xima vez|sempre|prefiro|\bs[óo]\b|\bsem\b|d'ora in poi|la prossima volta|in futuro|"
    r"preferisco|senza|以后|下次|今后|总是|别再|不要|只要|我喜欢|我更喜欢|请|впредь|в следующий раз|всегда|без|только")
NEW_TASK_RX = _rx(r"^(please )?((can|could|would) you )?(write|compose|draft|create|generate|make|list|name|translate|tell|"
                  r"describe|recommend|suggest|plan|give|summari[sz]e)( me)? (a|an|some|\d+|the following|this|my|about|how|"
                  r"why|what|something|['\"‘“])")
FORM_MAX_WORDS = 40


class _FormPreference:
    """`search(norm)`: a form word and an instruction/preference cue, in a short message that is not a new task."""

    def search(self, norm: str) -> bool:
        return (len(norm.split()) <= FORM_MAX_WORDS and not NEW_TASK_RX.search(norm)
                and bool(FORM_WORD_RX.search(norm)) and bool(FORM_CUE_RX.search(norm)))


# An explicit topic-change opener announces that the message is not about the reply, so it beats every cue after it
# ("Completely unrelated, but is it true there's no such ...?"). "btw"/"by the way" count only when what follows does
# not point at the reply ("btw, your date is wrong" stays a correction).
TOPIC_OPENER_RX = _rx(
    r"^(ok(ay)?|so|anyway|alright|hey)?[\s,.!]*((completely|totally|slightly|somewhat|kind of|a bit) )?(unrelated|"
    r"off[- ]topic|different (topic|question|subject|note)|new (topic|question|subject)|change of (topic|subject)|"
    r"changing (the )?(topic|subject)|switching gears|on (another|a different) note|random question|quick unrelated|"
    r"unrelated question|(quick|random|other|separate) (question|thing),? (unrelated|not about this))\b",
    r"^(can|could|shall) we (talk about|change|switch to) (something else|another|a different)\b|^let'?s (talk about "
    r"something else|change the (topic|subject))\b",
    r"^(btw|by the way)\b(?![\s,:;.-]*(you|your|you'?re|that|that'?s|this|this is|it|it'?s|the (answer|reply|code|"
    r"number|date|list|poem|email|story))\b)",
    r"^(por cierto|otra pregunta|cambiando de tema|au fait|autre question|autre chose|übrigens|andere frage|anderes "
    r"thema|aliás|outra pergunta|mudando de assunto|a proposito|cambiando argomento|顺便问|换个话题|另外一个问题)")

# (name, kind, confidence) per table, in precedence order. Kinds are those of hsd_ray.core.feedback.
TABLES: tuple[tuple[str, str, float, object], ...] = (
    ("correction", "correction", 0.93, CORRECTION_RX), ("complaint", "complaint", 0.92, COMPLAINT_RX),
    ("rephrase", "rephrase", 0.9, REPHRASE_RX), ("form_preference", "complaint", 0.88, _FormPreference()),
    ("new_topic", "new_topic", 0.06, TOPIC_RX), ("clarification", "clarification", 0.8, CLARIFY_RX),
    ("build_on", "build_on", 0.1, BUILD_RX), ("small_talk", "small_talk", 0.06, SMALLTALK_RX),
    ("positive", "positive", 0.85, POSITIVE_RX),
)

_TRAIL = re.compile(r"[\s.!,;:~)(*\U0001F300-\U0001FAFF\u2600-\u27BF]+$")


def normalise(text: str) -> str:
    """NFKC, lower case, collapsed whitespace, trailing punctuation/emoji stripped (a trailing '?' is kept)."""
    t = unicodedata.normalize("NFKC", text).lower().strip()
    t = re.sub(r"\s+", " ", t).replace("’", "'")
    stripped = _TRAIL.sub("", t)
    return stripped if stripped else t


def has_code(text: str) -> bool:
    return bool(CODE_RX.search(text))


def match_rules(followup: str) -> tuple[str, float, str] | None:
    """The first rule that fires on `followup` as (kind, confidence that it is feedback, rule name), or None."""
    norm = normalise(followup)
    if not norm:
        return ("small_talk", 0.02, "short:empty")
    if norm in SHORT:
        group, conf = SHORT[norm]
        kind = {"ack": "small_talk", "negative": _NEG_SHORT_KIND.get(norm, "complaint")}.get(group, group)
        return (kind, conf, f"short:{group}")
    if TOPIC_OPENER_RX.search(norm):
        return ("new_topic", 0.05, "rule:topic_opener")
    if has_code(followup) and ERROR_RX.search(followup):
        return ("correction", 0.9, "code_error")
    for name, kind, conf, rx in TABLES:
        if rx.search(norm):
            if kind == "positive" and len(norm.split()) > 25 and "?" in norm:
                continue  # a long message that opens with praise and then asks for something new
            return (kind, conf, f"rule:{name}")
    if THANKS_RX.search(norm) and len(norm.split()) <= 12 and not NEW_TASK_RX.search(norm):  # thanks, no new request
        return ("positive", 0.85, "rule:thanks")
    return None
