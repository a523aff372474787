"""Vocabulary of the synthetic English->German corpus: nouns, verbs, adjectives, time adverbs.

Tables as text keep ~150 entries readable; each is parsed once at import into
typed records that mini_text's grammar and translation rules use.
"""

from __future__ import annotations

from typing import NamedTuple

# Tables as text keep ~150 entries readable. Nouns: "en en-plural | Lemma gender
# Plural [weak accusative] | tags | reference synonym"; "-" marks mass nouns.
# English plurals equal to the singular (sheep, fish) are never drawn in the
# plural: the transcript would not say which German number is meant.
_NOUN_TABLE = """
man men | Mann m Männer | person | Herr m Herren Herrn
woman women | Frau f Frauen | person | Dame f Damen
child children | Kind n Kinder | person washable
girl girls | Mädchen n Mädchen | person
boy boys | Junge m Jungen Jungen | person
teacher teachers | Lehrer m Lehrer | person
doctor doctors | Arzt m Ärzte | person | Doktor m Doktoren
friend friends | Freund m Freunde | person
farmer farmers | Bauer m Bauern Bauern | person | Landwirt m Landwirte
king kings | König m Könige | person
mother mothers | Mutter f Mütter | person
father fathers | Vater m Väter | person
sister sisters | Schwester f Schwestern | person
brother brothers | Bruder m Brüder | person
neighbor neighbors | Nachbar m Nachbarn Nachbarn | person
dog dogs | Hund m Hunde | animal washable
cat cats | Katze f Katzen | animal portable
horse horses | Pferd n Pferde | animal washable sellable
bird birds | Vogel m Vögel | animal singer
mouse mice | Maus f Mäuse | animal portable
cow cows | Kuh f Kühe | animal sellable
fox foxes | Fuchs m Füchse | animal
duck ducks | Ente f Enten | animal
sheep sheep | Schaf n Schafe | animal sellable
fish fish | Fisch m Fische | animal food cookable
apple apples | Apfel m Äpfel | food portable
bread - | Brot n - | food
cake cakes | Kuchen m Kuchen | food cookable
soup soups | Suppe f Suppen | food cookable
egg eggs | Ei n Eier | food cookable portable
banana bananas | Banane f Bananen | food portable
cheese - | Käse m - | food
water - | Wasser n - | drink
milk - | Milch f - | drink
coffee - | Kaffee m - | drink cookable
tea - | Tee m - | drink cookable
juice - | Saft m - | drink
book books | Buch n Bücher | readable writable portable openable closable sellable
letter letters | Brief m Briefe | readable writable portable openable
newspaper newspapers | Zeitung f Zeitungen | readable portable
story stories | Geschichte f Geschichten | readable writable | Erzählung f Erzählungen
poem poems | Gedicht n Gedichte | readable writable
car cars | Auto n Autos | thing washable sellable | Wagen m Wagen
ball balls | Ball m Bälle | thing portable
key keys | Schlüssel m Schlüssel | thing portable
bag bags | Tasche f Taschen | thing portable openable closable
table tables | Tisch m Tische | thing buildable washable sellable
chair chairs | Stuhl m Stühle | thing buildable portable
door doors | Tür f Türen | thing openable closable
window windows | Fenster n Fenster | thing openable closable washable
bike bikes | Fahrrad n Fahrräder | thing washable sellable | Rad n Räder
picture pictures | Bild n Bilder | thing portable sellable | Gemälde n Gemälde
box boxes | Kiste f Kisten | thing portable openable closable buildable
cup cups | Tasse f Tassen | thing portable washable
hat hats | Hut m Hüte | thing portable
house houses | Haus n Häuser | building buildable sellable visitable | Gebäude n Gebäude
school schools | Schule f Schulen | building buildable visitable
church churches | Kirche f Kirchen | building buildable visitable
bridge bridges | Brücke f Brücken | building buildable
shop shops | Laden m Läden | building visitable closable | Geschäft n Geschäfte
"""
# Verbs: "base 3sg past | infinitive 3sg participle aux(h/s) Praeteritum-3sg |
# subject tags | object tags ("?" first: optional, "-": intransitive) | synonym".
_VERB_TABLE = """
see sees saw | sehen sieht gesehen h sah | person animal | person animal thing building food | erblicken erblickt erblickt h erblickte
eat eats ate | essen isst gegessen h aß | person animal | ? food |
read reads read | lesen liest gelesen h las | person | ? readable |
buy buys bought | kaufen kauft gekauft h kaufte | person | food drink readable thing building | erwerben erwirbt erworben h erwarb
find finds found | finden findet gefunden h fand | person animal | thing food readable animal | entdecken entdeckt entdeckt h entdeckte
need needs needed | brauchen braucht gebraucht h brauchte | person | thing food drink readable | benötigen benötigt benötigt h benötigte
love loves loved | lieben liebt geliebt h liebte | person | person animal |
hear hears heard | hören hört gehört h hörte | person animal | person animal |
open opens opened | öffnen öffnet geöffnet h öffnete | person | openable |
close closes closed | schließen schließt geschlossen h schloss | person | closable |
build builds built | bauen baut gebaut h baute | person | buildable | errichten errichtet errichtet h errichtete
carry carries carried | tragen trägt getragen h trug | person | portable |
take takes took | nehmen nimmt genommen h nahm | person | portable food |
bring brings brought | bringen bringt gebracht h brachte | person | portable food drink |
wash washes washed | waschen wäscht gewaschen h wusch | person | washable |
visit visits visited | besuchen besucht besucht h besuchte | person | person visitable |
forget forgets forgot | vergessen vergisst vergessen h vergaß | person | portable person |
write writes wrote | schreiben schreibt geschrieben h schrieb | person | ? writable |
drink drinks drank | trinken trinkt getrunken h trank | person animal | ? drink |
cook cooks cooked | kochen kocht gekocht h kochte | person | ? cookable |
sell sells sold | verkaufen verkauft verkauft h verkaufte | person | sellable food |
meet meets met | treffen trifft getroffen h traf | person | person |
lose loses lost | verlieren verliert verloren h verlor | person | portable |
sleep sleeps slept | schlafen schläft geschlafen h schlief | person animal | - |
run runs ran | laufen läuft gelaufen s lief | person animal | - | rennen rennt gerannt s rannte
come comes came | kommen kommt gekommen s kam | person animal | - |
laugh laughs laughed | lachen lacht gelacht h lachte | person | - |
sing sings sang | singen singt gesungen h sang | person singer | - |
work works worked | arbeiten arbeitet gearbeitet h arbeitete | person | - |
wait waits waited | warten wartet gewartet h wartete | person animal | - |
play plays played | spielen spielt gespielt h spielte | person animal | - |
swim swims swam | schwimmen schwimmt geschwommen s schwamm | person animal | - |
fall falls fell | fallen fällt gefallen s fiel | person animal portable | - |
"""
# Adjectives: "english | German[/attributive stem] | noun tags | synonym | g(radable: takes sehr)".
_ADJECTIVE_TABLE = """
old | alt | person animal thing building readable | | g
new | neu | thing building readable | | g
big | groß | person animal thing building | riesig | g
small | klein | person animal thing building food | winzig | g
beautiful | schön | person animal thing building | hübsch | g
young | jung | person animal | | g
hungry | hungrig | person animal | | g
tired | müde | person animal | erschöpft | g
happy | glücklich | person animal | froh | g
sad | traurig | person | betrübt | g
clever | klug | person animal | schlau | g
fast | schnell | animal thing | rasch | g
red | rot | thing building food | |
green | grün | thing building food | |
expensive | teuer/teur | thing building food drink readable | kostspielig | g
cheap | billig | thing food drink readable | günstig | g
heavy | schwer | thing animal | | g
long | lang | readable building | | g
fresh | frisch | food drink | | g
hot | heiß | food drink | | g
cold | kalt | food drink | | g
good | gut | person animal food drink readable | | g
dark | dunkel/dunkl | thing building drink | | g
"""
# Time adverbs: "english | German | synonym | tense".
_TIME_TABLE = """
today | heute | | present
now | jetzt | nun | present
yesterday | gestern | | past
last week | letzte Woche | vergangene Woche | past
tomorrow | morgen | | future
next week | nächste Woche | kommende Woche | future
"""


class GermanNoun(NamedTuple):
    lemma: str
    gender: str
    plural: str
    acc: str  # accusative singular: differs for weak nouns (den Jungen)


class Noun(NamedTuple):
    en: str
    en_pl: str
    de: GermanNoun
    tags: frozenset[str]
    de_syn: GermanNoun | None

    @property
    def mass(self) -> bool:
        return self.en_pl == "-"

    @property
    def can_plural(self) -> bool:
        return not self.mass and self.en_pl != self.en


class GermanVerb(NamedTuple):
    inf: str  # also the 3rd person plural present
    pres3sg: str
    participle: str
    aux: str  # "h" (haben) or "s" (sein)
    past3sg: str

    @property
    def past3pl(self) -> str:
        return self.past3sg + ("n" if self.past3sg.endswith("e") else "en")


class Verb(NamedTuple):
    en: str
    en_3sg: str
    en_past: str
    de: GermanVerb
    de_syn: GermanVerb | None
    subj: frozenset[str]
    obj: frozenset[str]  # empty: intransitive
    obj_optional: bool


class Adjective(NamedTuple):
    en: str
    de: str
    de_stem: str | None  # attributive stem when not regular (teuer -> teure)
    de_syn: str | None
    tags: frozenset[str]
    gradable: bool


class Time(NamedTuple):
    en: str
    de: str
    de_syn: str | None
    tense: str


def _rows(table: str) -> list[list[str]]:
    return [[field.strip() for field in line.split("|")] for line in table.strip().splitlines()]


def _german_noun(spec: str) -> GermanNoun:
    lemma, gender, plural, *acc = spec.split()
    return GermanNoun(lemma, gender, plural, acc[0] if acc else lemma)


def _parse_nouns() -> dict[str, Noun]:
    nouns = {}
    for row in _rows(_NOUN_TABLE):
        en, en_pl = row[0].split()
        syn = _german_noun(row[3]) if len(row) > 3 else None
        nouns[en] = Noun(en, en_pl, _german_noun(row[1]), frozenset(row[2].split()), syn)
    return nouns


def _parse_verbs() -> dict[str, Verb]:
    verbs = {}
    for en, de, subj, obj, syn in _rows(_VERB_TABLE):
        base, third, past = en.split()
        optional = obj.startswith("?")
        obj_tags = frozenset(obj.lstrip("?").split()) - {"-"}
        verbs[base] = Verb(base, third, past, GermanVerb(*de.split()), GermanVerb(*syn.split()) if syn else None,
                           frozenset(subj.split()), obj_tags, optional)
    return verbs


def _parse_adjectives() -> dict[str, Adjective]:
    adjectives = {}
    for en, de, tags, syn, grade in _rows(_ADJECTIVE_TABLE):
        word, _, stem = de.partition("/")
        adjectives[en] = Adjective(en, word, stem or None, syn or None, frozenset(tags.split()), grade == "g")
    return adjectives


NOUNS = _parse_nouns()
VERBS = _parse_verbs()
ADJECTIVES = _parse_adjectives()
TIMES = {en: Time(en, de, syn or None, tense) for en, de, syn, tense in _rows(_TIME_TABLE)}
