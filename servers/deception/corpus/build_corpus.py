"""Writes the Markov training corpora (usernames.txt, merchants.txt) from the word lists below.

The corpora ship with the project; this script is how they were made, so anyone can see what
the chains learn from and rebuild the files byte for byte (`python build_corpus.py`). Nothing
is downloaded: the names are common given names, surnames and words combined the way people
and small businesses name themselves, drawn with a fixed seed.
"""

from __future__ import annotations

import random
from pathlib import Path

CORPUS_SEED = 20250101
"""Seed of the draw; changing it changes both corpora (and so every generated name)."""

USERNAME_COUNT = 4000
"""Distinct usernames written to usernames.txt."""

MERCHANT_COUNT = 600
"""Distinct merchant names written to merchants.txt."""


def _words(text: str) -> list[str]:
    return text.split()


FIRST_NAMES = _words(
    """
james mary robert patricia john jennifer michael linda david elizabeth william barbara richard
susan joseph jessica thomas sarah charles karen chris nancy daniel lisa matthew betty anthony
sandra mark ashley donald kimberly steven emily paul donna andrew michelle joshua carol kevin
amanda brian melissa george deborah timothy stephanie ronald rebecca jason laura edward sharon
jeffrey cynthia ryan kathleen jacob amy gary angela nicholas anna eric brenda jonathan emma
stephen pamela larry nicole justin helen scott samantha brandon katherine benjamin christine
samuel rachel gregory carolyn alexander janet frank maria patrick olivia raymond heather jack
diane dennis julie jerry joyce tyler victoria aaron kelly jose lauren adam christina nathan
joan henry evelyn zachary judith douglas megan peter andrea kyle cheryl noah hannah ethan
jacqueline jeremy martha walter gloria christian teresa keith ann roger sara terry madison
austin frances sean kathryn gerald janice carl jean harold abigail dylan alice arthur julia
lawrence judy jordan sophia jesse grace bryan denise billy amber bruce doris gabriel marilyn
joe danielle logan beverly alan isabella juan theresa albert diana willie natalie elijah
brittany wayne charlotte randy marie vincent kayla mason alexis roy lori ralph alyssa bobby
russell liam lucas mia luca sofia mateo camila leon lena felix clara hugo ines arjun priya
rahul ananya vikram sneha wei jing hiroshi yuki kenji sakura minho jiwoo omar fatima ali
aisha youssef leila ivan olga dmitri anastasia pavel katya lars ingrid sven astrid pieter
femke jan anouk marco giulia matteo chiara pablo lucia diego valentina joao beatriz tiago
mariana kwame amara chidi ngozi tomasz agnieszka piotr zofia mehmet elif emre zeynep
"""
)

LAST_NAMES = _words(
    """
smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez
gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson white harris
sanchez clark ramirez lewis robinson walker young allen king wright scott torres nguyen hill
flores green adams nelson baker hall rivera campbell mitchell carter roberts gomez phillips
evans turner diaz parker cruz edwards collins reyes stewart morris morales murphy cook rogers
gutierrez ortiz morgan cooper peterson bailey reed kelly howard ramos kim cox ward richardson
watson brooks chavez wood james bennett gray mendoza ruiz hughes price alvarez castillo
sanders patel myers long ross foster jimenez powell jenkins perry russell sullivan bell
coleman butler henderson barnes gonzales fisher vasquez simmons romero jordan patterson
alexander hamilton graham reynolds griffin wallace moreno west cole hayes bryant herrera
gibson ellis tran medina aguilar stevens murray ford castro marshall owens harrison fernandez
mcdonald woods washington kennedy wells vargas henry chen freeman webb tucker guzman burns
crawford olson simpson porter hunter gordon mendez silva shaw snyder mason dixon munoz hunt
hicks holmes palmer wagner black robertson boyd rose stone salazar fox warren mills meyer
rice schmidt garza daniels ferguson nichols stephens soto weaver ryan gardner payne grant
dunn kelley spencer hawkins arnold pierce hansen peters santos hart bradley knight elliott
cunningham duncan armstrong hudson carroll lane riley andrews ray berry perkins hoffman
mueller schneider fischer weber becker schulz koch richter klein wolf novak dubois laurent
moreau lefebvre rossi russo ferrari esposito bianchi romano kowalski nowak wisniewski
jansen devries bakker visser smit johansson andersson nilsson larsen nielsen hansen
yamamoto tanaka suzuki watanabe sato park choi kang wang zhang liu yang huang zhao wu zhou
singh kumar sharma gupta mehta iyer reddy okafor mensah diallo haddad nasser yilmaz kaya
ivanov petrov smirnov popescu horvat costa oliveira pereira almeida
"""
)

HANDLE_WORDS = _words(
    """
shadow pixel ninja wolf fox tiger dragon falcon raven storm thunder frost ember blaze
nova comet orbit lunar solar astro cosmic nebula quasar vector binary cipher kernel
byte glitch static neon chrome cyber turbo rocket jet drift rally racer rider ghost
phantom spirit echo silent hidden mystic sage wizard rogue ranger hunter archer knight
viking samurai pirate captain major sergeant doc prof chef baker coder hacker gamer
player geek nerd guru boss king queen prince duke lord lady panda koala otter badger
moose bison eagle hawk owl crow lynx puma cobra viper shark orca whale dolphin salmon
maple cedar willow aspen river canyon summit ridge harbor island meadow prairie desert
arctic polar autumn winter spring summer sunny cloudy misty rainy snowy stormy lucky
happy crazy lazy sleepy grumpy jolly witty clever brave bold swift quick rapid steady
iron steel copper silver golden crimson scarlet azure indigo violet emerald jade amber
onyx obsidian coffee mocha latte espresso pepper ginger honey mango cherry lemon lime
kiwi peach plum berry cookie muffin waffle noodle taco burrito pizza sushi ramen
"""
)

MERCHANT_PLACES = _words(
    """
main elm oak maple pine cedar park lake river bay harbor hill valley ridge summit
north south east west central union liberty market station mill bridge brook spring
meadow garden grove orchard willow birch aspen highland lowland coastal prairie canyon
riverside lakeside parkside hillside bayside westside eastside uptown downtown midtown
old town village city county metro capitol heritage pioneer frontier greenfield fairview
"""
)

MERCHANT_OWNERS = _words(
    """
joe tony maria sam rosa luigi nick frank ali chen anna mike lou gus otto hans rita
kim raj mo ben max leo ivy kate nora ruby jack eddie vinny carmen lucia marco paolo
"""
)

MERCHANT_ADJECTIVES = _words(
    """
golden blue red green silver little big happy lucky royal grand fresh urban rustic
modern classic daily corner family friendly sunny bright quick express premier prime
"""
)

MERCHANT_NOUNS = _words(
    """
leaf bean cup spoon fork plate oven kettle anchor lantern sparrow robin fox bear owl
crown star moon sun rose lotus ivy fern stone brick barrel basket wheel hammer needle
"""
)

MERCHANT_TRADES = """
Bakery|Cafe|Coffee|Coffee Co|Deli|Diner|Grill|Pizzeria|Taqueria|Bistro|Kitchen|Noodle House|
Sushi Bar|Market|Grocers|Grocery|Foods|Butcher|Fish Market|Wine Shop|Liquors|Pharmacy|Drugs|
Hardware|Home Center|Garden Center|Nursery|Florist|Books|Bookshop|Stationers|Music|Records|
Electronics|Computers|Mobile|Outfitters|Apparel|Boutique|Shoes|Jewelers|Optical|Salon|
Barbers|Spa|Fitness|Yoga|Dental|Clinic|Vet|Pet Supply|Auto Repair|Auto Parts|Tire Center|
Car Wash|Gas|Fuel|Motors|Cycles|Bike Shop|Sports|Toys|Games|Hobby Shop|Art Supply|Framing|
Cleaners|Laundry|Tailors|Printing|Copy Center|Storage|Movers|Plumbing|Electric|Supply|
Lumber|Paint|Appliance|Furniture|Mattress|Lighting|Cinema|Theater|Bowling|Hotel|Inn|Motel|
Travel|Tours|Parking|Transit|Taxi|Insurance|Tax Service|Pawn|Thrift|Antiques|Gifts|Cards
""".replace("\n", "").split("|")

MERCHANT_SUFFIXES = ["", "", "", "", " Co", " & Co", " Inc", " LLC", " Ltd", " Shop", " Store", " Express"]


def _username(rng: random.Random) -> str:
    first = rng.choice(FIRST_NAMES)
    last = rng.choice(LAST_NAMES)
    word = rng.choice(HANDLE_WORDS)
    other = rng.choice(HANDLE_WORDS)
    year = rng.randint(58, 109) % 100
    digits = str(rng.randint(1, 999))
    pattern = rng.choices(
        range(14),
        weights=[12, 10, 9, 7, 6, 6, 8, 7, 6, 8, 5, 4, 4, 8],
    )[0]
    forms = [
        f"{first}.{last}",
        f"{first}{last}",
        f"{first[0]}{last}",
        f"{first}_{last}",
        f"{first}{year:02d}",
        f"{first}.{last}{year:02d}",
        f"{word}{other}",
        f"{word}_{other}",
        f"{word}{digits}",
        f"{first}{digits}",
        f"{last}{first[0]}",
        f"{first}-{last}",
        f"the{word}",
        f"{word}{first}",
    ]
    return forms[pattern]


def _merchant(rng: random.Random) -> str:
    trade = rng.choice(MERCHANT_TRADES)
    suffix = rng.choice(MERCHANT_SUFFIXES)
    pattern = rng.choices(range(6), weights=[25, 20, 20, 15, 12, 8])[0]
    if pattern == 0:
        stem = f"{rng.choice(MERCHANT_PLACES).title()} Street"
    elif pattern == 1:
        stem = f"{rng.choice(MERCHANT_OWNERS).title()}'s"
    elif pattern == 2:
        stem = f"{rng.choice(MERCHANT_ADJECTIVES).title()} {rng.choice(MERCHANT_NOUNS).title()}"
    elif pattern == 3:
        stem = rng.choice(MERCHANT_PLACES).title()
    elif pattern == 4:
        stem = f"{rng.choice(LAST_NAMES).title()} & {rng.choice(LAST_NAMES).title()}"
    else:
        stem = f"The {rng.choice(MERCHANT_NOUNS).title()}"
    return f"{stem} {trade}{suffix}"


def build(directory: Path) -> None:
    """Write usernames.txt and merchants.txt into `directory`, sorted, one name a line."""
    rng = random.Random(CORPUS_SEED)
    usernames: set[str] = set()
    while len(usernames) < USERNAME_COUNT:
        usernames.add(_username(rng))
    merchants: set[str] = set()
    while len(merchants) < MERCHANT_COUNT:
        merchants.add(_merchant(rng))
    (directory / "usernames.txt").write_text("\n".join(sorted(usernames)) + "\n", encoding="utf-8")
    (directory / "merchants.txt").write_text("\n".join(sorted(merchants)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    build(Path(__file__).resolve().parent)
