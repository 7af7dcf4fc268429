"""The demo data's English vocabulary: common words by part of speech and meaning, plus inflection.

Written for this project (no outside word list). Nouns are grouped by what they can do in a
sentence (people call, food is eaten, places are visited) so that the grammar in ``grammar.py``
makes sentences that a listener would find ordinary. Words are separated by whitespace; a multi-word
noun is joined with ``_`` here ("post_office") and spoken with a space.
"""

from __future__ import annotations


def _words(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w.replace("_", " ") for w in text.split()))  # unique, in order


# --- nouns -------------------------------------------------------------------------------------
PEOPLE = _words("""
man woman boy girl child baby friend neighbor teacher doctor nurse student farmer driver cook
waiter waitress artist pilot singer dancer writer player coach manager worker engineer lawyer
dentist baker painter builder cleaner guard guest visitor stranger customer passenger patient
tourist mother father sister brother aunt uncle cousin grandmother grandfather son daughter wife
husband boss doctor scientist police_officer firefighter mechanic librarian shopkeeper gardener
photographer musician actor actress reporter plumber carpenter cashier secretary banker chef
professor classmate roommate teammate partner king queen prince princess soldier sailor captain
fisherman hunter shepherd clerk tailor barber judge mayor officer author poet student_nurse
astronaut athlete babysitter bride groom butcher chemist coworker detective
director editor electrician florist goalkeeper grandson granddaughter guide hairdresser
host instructor inventor janitor jeweler journalist lifeguard magician mailman model nephew niece
pharmacist physician pianist politician president principal
programmer receptionist referee runner salesman sculptor shopper skater surgeon
swimmer teenager toddler traveler twin umpire veterinarian violinist volunteer widow winner
""")
# People one can say "my ..." about.
RELATIONS = _words("""
friend neighbor teacher doctor mother father sister brother aunt uncle cousin grandmother
grandfather son daughter wife husband boss classmate roommate teammate partner coach dentist
boyfriend girlfriend best_friend colleague landlord
""")
PROFESSIONS = _words("""
teacher doctor nurse farmer driver cook waiter artist pilot singer dancer writer engineer lawyer
dentist baker painter builder cleaner scientist firefighter mechanic librarian gardener
photographer musician actor reporter plumber carpenter cashier secretary banker chef professor
sailor fisherman tailor barber judge police_officer
""")
ANIMALS = _words("""
dog cat horse cow pig sheep goat chicken duck bird rabbit mouse fish frog bear lion tiger elephant
monkey fox wolf deer owl snake turtle bee butterfly spider ant whale dolphin shark squirrel parrot
donkey camel zebra giraffe kangaroo penguin goose swan eagle crow pigeon hamster puppy kitten lamb
calf pony bat beetle crab lobster octopus seal otter hedgehog
alligator beaver buffalo cheetah chimpanzee cricket crocodile dove flamingo gorilla
hippo jellyfish koala ladybug leopard lizard moose mosquito ostrich panda peacock pelican rhino
rooster salmon seagull snail sparrow starfish stork toad trout turkey vulture woodpecker
worm yak
""")
FOOD = _words("""
apple banana orange pear grape lemon cherry peach plum strawberry melon watermelon pineapple mango
carrot potato tomato onion cucumber pepper cabbage lettuce mushroom pumpkin egg sandwich burger
pizza pie cake cookie biscuit muffin doughnut pancake sausage steak hot_dog taco bagel croissant
cupcake candy_bar lollipop pretzel peanut walnut almond sweet_potato chocolate_bar salad
avocado apricot blueberry coconut kiwi raspberry fig lime grapefruit broccoli
cauliflower eggplant zucchini radish beet dumpling meatball omelet
waffle brownie scone cracker bun hamburger cheeseburger quesadilla burrito
rice_ball cinnamon_roll granola_bar cheese_sandwich
""")
FOOD_MASS = _words("""
bread rice pasta soup cheese butter jam honey meat chicken fish beef pork salt sugar flour cereal
popcorn toast ice_cream chocolate yogurt spaghetti noodle_soup cream pudding candy fruit salad
oatmeal porridge spinach garlic ginger ketchup mustard mayonnaise vinegar
olive_oil gravy broth stew curry salsa lasagna risotto sushi bacon ham tuna
shrimp apple_pie cornbread
""")
DRINKS = _words("""
water milk tea coffee juice orange_juice apple_juice lemonade soda cocoa hot_chocolate
smoothie milkshake iced_tea green_tea sparkling_water grape_juice tomato_juice
""")
OBJECTS = _words("""
book pen pencil key phone bag box cup glass plate bowl spoon fork knife bottle ball toy hat coat
shirt shoe sock umbrella wallet ticket letter card map camera watch clock lamp blanket pillow
towel brush comb mirror basket bucket candle picture photo radio computer laptop tablet keyboard
notebook folder envelope stamp backpack suitcase jacket sweater dress skirt scarf glove belt ring
necklace bracelet button coin purse badge flag kite balloon puzzle doll drum guitar_case ladder
hammer saw shovel rope chain bell whistle flashlight battery charger cable remote_control
calculator ruler eraser marker crayon sticker poster calendar diary jar lid pan pot kettle teapot
mug tray napkin sponge soap toothbrush helmet wheel tire tent sleeping_bag fan heater vase
package parcel present gift sandwich_bag lunchbox water_bottle newspaper magazine paintbrush
tool_box screwdriver glue_stick tape scissors needle umbrella_stand toy_car teddy_bear
alarm_clock apron bandage blender broom bookmark brick briefcase cap
cardboard_box chalk clipboard coat_hanger compass cookbook cooler cork costume
cushion dictionary dice doormat dustpan earring extension_cord feather fishing_rod
flower_pot frame frying_pan garden_hose globe goggles grater hairbrush hairdryer handbag
headphones highlighter hook hose ice_pack iron jigsaw jug keychain label
lantern lawn_mower leash lighter lipstick locket lock magnet magnifying_glass mask
measuring_tape medal microphone microwave mitten mop nail necktie notepad oven_mitt
padlock paint_can pajamas paper_clip passport peg perfume piggy_bank pillowcase
pin plant pliers plug printer projector quilt raincoat rake razor receipt recorder
ribbon rolling_pin rubber_band saddle safety_pin salt_shaker sandal scale scarecrow
screw seashell sewing_machine shampoo sheet shoelace shopping_bag skateboard sled slipper
snow_globe speaker spatula stapler stool straw suit sunglasses
sweatshirt swimsuit tablecloth telescope thermometer thermos thread tie tissue toaster
toolbox torch trophy trowel tweezers typewriter vacuum_cleaner vest violin
wagon watering_can wig windbreaker wrench yarn zipper
""")
FURNITURE = _words("""
table chair sofa bed desk shelf door window bench counter floor stove bookcase armchair couch
dresser carpet rug doorstep windowsill
bathtub cabinet chest coffee_table crib fireplace nightstand
ottoman porch radiator stairs step balcony railing
""")  # "on the table", "under the bed"
STORAGE = _words("cupboard fridge oven sink drawer closet wardrobe basket box bag")  # "in the ..."
BUILDINGS = _words("""
school library station market shop store bank office hospital museum church restaurant cafe hotel
airport bakery post_office supermarket pharmacy cinema theater gym factory farm zoo mall stadium
bus_stop train_station police_station fire_station bookstore hair_salon gas_station city_hall
aquarium art_gallery bowling_alley castle clinic college concert_hall court
embassy garden_center greenhouse hardware_store ice_rink laundromat lighthouse
motel music_school nursery palace parking_garage pet_shop planetarium
prison pool skyscraper sports_center swimming_pool temple toy_store
university warehouse youth_club
""")
OUTDOORS_IN = _words("""
park garden forest playground field village city town square yard backyard valley woods
countryside
meadow orchard jungle desert swamp vineyard neighborhood suburb
""")  # "in the park"
OUTDOORS_AT = _words("""
beach river lake street road bridge mountain hill harbor island campsite parking_lot corner
riverbank seaside crossroads
pier dock cliff waterfall fountain pond canal tunnel gate fence highway
""")  # "at the beach"
OUTDOORS = OUTDOORS_IN + OUTDOORS_AT
ROOMS = _words("""
kitchen bedroom bathroom living_room hallway basement attic garage classroom dining_room
office waiting_room
laundry_room study pantry staff_room lobby music_room
""")
VEHICLES = _words("""
car bus train bike boat plane truck taxi van tram ship scooter motorcycle bicycle
ambulance fire_truck helicopter jeep minibus sailboat canoe kayak tractor
""")
READABLES = _words("""
book letter newspaper magazine story poem note message report menu list recipe email article
postcard chapter instructions sign invitation
comic novel textbook brochure leaflet receipt timetable label contract
""")
SHOWS = _words("""
movie film show game match concert play news race parade cartoon documentary
opera musical ballet quiz_show talent_show soap_opera puppet_show magic_show
""")
GAMES = _words("""
football tennis chess cards soccer basketball golf volleyball baseball hockey checkers hide_and_seek
rugby cricket badminton darts poker bingo dominoes table_tennis
""")
INSTRUMENTS = _words("""
piano guitar violin drums flute trumpet cello harp saxophone clarinet
banjo harmonica organ tuba accordion keyboard ukulele xylophone
""")
EVENTS = _words("""
meeting party lesson class trip holiday dinner lunch breakfast picnic wedding birthday_party
interview exam test appointment concert game show festival
barbecue sleepover dance_class field_trip graduation reunion fair
""")
NAMES_MALE = _words("""
James John Robert Michael David William Richard Thomas Daniel Paul Mark Steven Andrew Peter George
Edward Henry Jack Oliver Harry Samuel Benjamin Lucas Leo Noah Ethan Adam Ryan Kevin Brian Eric
Frank Carlos Luis Omar Ali Hassan Raj Arjun Ken Hiro Tom Sam Ben Max Nick Tony Victor Oscar Felix
Martin Simon Ivan Pedro Diego Marco Hugo Leon Owen Jacob Luke Dylan Nathan Aaron Isaac Caleb Mason
Abdul Alan Albert Alex Andre Anthony Arthur Bill Bruce Carl Chris Colin Connor Dan
Dennis Derek Dominic Edgar Eli Elliot Emil Evan Finn Fred Gary Gordon Grant Greg Harvey Ian
Jason Joe Jonah Jordan Jose Karl Keith Kyle Larry Liam Louis Malik Matt Miles Milo Neil
Noel Otto Patrick Philip Ralph Ray Rex Roger Ross Roy Scott Sean Seth Stan Ted Tim Toby
Umar Vince Walter Wayne Xavier Yusuf Zack
""")
NAMES_FEMALE = _words("""
Mary Linda Sarah Emma Olivia Sophia Emily Anna Laura Lisa Julia Grace Lucy Alice Chloe Mia Ella
Hannah Rachel Rebecca Jessica Amy Kate Helen Nora Rose Ruby Zoe Maya Priya Aisha Fatima Leila
Yuki Mei Lin Sofia Elena Maria Carmen Rosa Ana Clara Eva Ivy Jane Sara Kim Nina Tina Paula Diana
Irene Vera Wendy Holly Amelia Lily Stella Hazel Alma Iris Jenny Megan
Abby Ada Agnes Alison Amber Andrea Angela Ann Audrey Beth Bella Bonnie Brenda
Carla Carol Cathy Cora Daisy Dana Donna Edith Erin Fiona Flora Gina Gloria Hilda Ida
Ingrid Isla Jade Joan Joy Judy June Karen Katie Kira Lara Lena Lola Lorna Lucia Mabel Maggie
Martha Molly Monica Nadia Naomi Olga Pam Pearl Penny Rita Ruth Sally Sandra Sonia Susan
Tara Tessa Una Uma Violet Wanda Yara Zara
""")
COLORS = _words("red blue green yellow black white brown gray pink purple orange silver gold")

# --- adjectives ---------------------------------------------------------------------------------
THING_ADJ = _words("""
big small little old new heavy light clean dirty cheap expensive beautiful ugly nice pretty soft
hard empty full broken long short tiny huge round square flat shiny dark bright wet dry warm cold
strange lovely simple plain useful fancy wooden plastic metal glass paper leather cotton favorite
spare lost missing tidy messy strong thin thick smooth rough sharp dull loud quiet modern ancient
perfect enormous precious famous ordinary special strange
narrow wide deep shallow curly straight fragile sturdy cozy comfortable uncomfortable
valuable worthless noisy silent sticky slippery fluffy fuzzy bumpy colorful faded golden rusty dusty
clear crooked tight loose gigantic miniature handmade secondhand stolen borrowed
damaged spotless antique vintage waterproof electric digital portable
""")
FOOD_ADJ = _words("""
fresh sweet hot cold warm delicious ripe sour tasty salty spicy crunchy soft juicy frozen homemade
burnt dry cheap expensive big small whole large green red little warm
""")
PERSON_ADJ = _words("""
happy sad tired hungry thirsty angry busy ready late early sick kind friendly quiet nervous excited
bored proud calm worried sleepy lucky careful polite funny brave shy clever smart honest patient
gentle cheerful grumpy lonely curious surprised confused upset scared relaxed healthy strong
young old tall short famous rich poor helpful lazy serious silly wise lovely nice cold hot
grateful jealous generous selfish stubborn cautious confident anxious energetic
exhausted furious delighted thrilled embarrassed ashamed amazed annoyed awake asleep
alone hopeful impatient joyful modest peaceful
pleased restless sensible sincere sorry talented thoughtful unhappy
""")
PERSON_ATTR_ADJ = _words("""
young old tall short kind friendly quiet happy tired busy famous helpful clever brave shy polite
funny lazy new little nice angry hungry lonely patient cheerful
""")
ANIMAL_ADJ = _words("""
small big little old young hungry tired friendly lazy noisy quiet fat thin fluffy wild tiny huge
brown black white gray happy sleepy clever angry scared cute
""")
PLACE_ADJ = _words("""
big small old new busy quiet crowded empty beautiful nice local famous lovely dark bright clean
dirty modern noisy peaceful tiny huge open closed warm cold
cozy tidy historic popular expensive cheap lively deserted sunny shady
""")
DRINK_ADJ = _words("hot cold fresh warm sweet iced")
READABLE_ADJ = _words("long short new old funny sad strange important interesting boring")
VEHICLE_ADJ = _words("old new big small fast slow dirty clean shiny noisy")
SHOW_ADJ = _words("new long funny boring exciting scary sad great")
EVENT_ADJ = _words("big long short important early late special surprise")
WEATHER_ADJ = _words("sunny rainy cloudy windy cold hot warm cool foggy snowy stormy wet dry")

# --- adverbs ------------------------------------------------------------------------------------
MANNER_ADV = _words("""
quickly slowly carefully quietly loudly happily softly gently easily badly well patiently politely
calmly nervously proudly angrily sadly suddenly quickly carefully silently clearly neatly
eagerly bravely kindly warmly openly safely slowly properly
briskly cheerfully curiously firmly freely gladly gracefully honestly
hungrily lazily loosely merrily noisily playfully rapidly rudely seriously
sleepily smoothly steadily sweetly tenderly thoughtfully tightly wildly wisely
""")
FREQUENCY_ADV = _words("always usually often sometimes rarely never")

# --- verbs by frame -----------------------------------------------------------------------------
# Each transitive verb is listed with the kind of object it takes.
TRANSITIVE = {
    "food": _words("""
eat cook buy sell bake cut share taste order want like love hate bring find choose wash slice
peel cook grab finish drop carry hide save prepare serve heat pick
chop boil fry grill roast mix stir freeze warm toast bite chew smell wrap deliver
"""),
    "drink": _words(
        "drink pour buy order want like spill share make finish bring heat sip taste spill freeze cool"
    ),
    "object": _words("""
hold carry drop find lose buy sell clean wash fix break open close borrow lend bring take move
hide paint use need want keep pack wrap lift push pull check touch show drop throw catch choose
forget remember return order mend polish count fold hang pick grab collect share test sort
shake sweep wear hang iron dust repair replace unpack weigh measure decorate fill empty tie untie lock unlock load unload deliver borrow rent
"""),
    "readable": _words(
        "read write open send find lose sign print check finish answer copy translate edit review study underline recycle"
    ),
    "person": _words("""
meet call help visit thank invite ask tell teach follow wake join hug greet miss like love know
see watch hear find remember forget trust answer phone email text pay thank warn wait_for
interview hire kiss congratulate blame forgive surprise comfort hug tickle photograph
"""),
    "animal": _words("feed wash walk chase watch see hear find catch follow pet brush love draw"),
    "place": _words("visit leave clean enter paint find like love miss reach explore photograph"),
    "vehicle": _words("drive ride park wash fix stop buy sell rent catch miss take clean paint"),
    "show": _words("watch enjoy miss like love hate record see start finish"),
    "game": _words("play watch like enjoy teach learn win lose"),
    "instrument": _words("play practice tune carry learn clean"),
    "event": _words("plan miss enjoy organize cancel attend prepare host skip remember forget"),
}
INTRANSITIVE = _words("""
sleep laugh smile cry wait arrive leave sing dance swim run walk work rest cough sneeze shout
whisper listen study relax travel jump shop cook read write paint draw exercise stretch yawn
knock wave clap nod shiver hurry stay win lose practice pray sit stand climb fall complain argue
snore giggle blink frown sigh skate ski jog hike camp fish knit nap whistle
bow kneel wink chuckle recover faint float sink vote volunteer babysit sunbathe
""")
ANIMAL_INTRANSITIVE = _words("""
sleep run swim jump play eat hide bark climb fly sing wait walk rest sit drink
""")
DITRANSITIVE = _words("give send bring show lend hand pass offer sell buy throw")
MOTION = _words("go walk drive run hurry come return travel ride cycle fly move rush")
PUT = _words("put leave place hide keep drop set lay")
TO_INFINITIVE = _words("""
want need try plan hope decide forget remember like love hate learn promise refuse agree expect
""")
GERUND = _words("enjoy finish stop start like love hate avoid keep mind practice")
THAT_CLAUSE = _words("think know hope believe say guess feel remember forget hear notice")
LINKING = _words("look seem feel sound become get")
# Verbs of state: no "Let's like ..." or "Please know ...", no "quickly" or "with my sister".
STATIVE = frozenset(
    _words("""
like love hate want need know seem believe think hope guess mind expect own prefer trust miss
feel sound look become get see hear notice agree refuse
""")
)


def all_words() -> set[str]:
    """Every distinct word (lower-cased, split on spaces) the lexicon can produce as a base form."""
    groups = [
        v
        for k, v in globals().items()
        if k.isupper() and isinstance(v, tuple) and all(isinstance(w, str) for w in v)
    ]
    groups += list(TRANSITIVE.values())
    return {w.lower() for g in groups for phrase in g for w in phrase.split()}
