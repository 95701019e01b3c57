"""Imperatives that start a *new* task with the verbs of a redo request (highlight the differences between X and Y,
number the planets by size, use simple words to explain Z, give me the recipe first, be less afraid of ...), beside
redo requests with the same verbs that point at the reply just given (highlight the key terms, number the steps).

Written after the redo-request rules (redo_requests.py) were seen firing on such new tasks in a hand check of 15
made-up messages; none of those 15 is copied here. Split on its own (wave 3 in scripts/make_followups.py).

Labelling: the verb does not decide, its object does. A request whose object is the reply or a part of it ("the
steps", "the key terms", "it") is rephrase; one whose object is something new ("the differences between TCP and
UDP", "the planets") is new_topic when unrelated to the reply, build_on when it builds on it.
"""

CONTEXTS = [
    ("sv-vaccine", "how do vaccines work",
     "Vaccines train your immune system by exposing it to a harmless piece or weakened form of a germ. Your body makes "
     "antibodies and memory cells against it, so if you meet the real germ later, your immune system recognises it "
     "and responds quickly, before you get seriously ill.",
     [("highlight the words I should remember", "rephrase"),
      ("use shorter sentences, my grandma will read this", "rephrase"),
      ("be more precise about the memory cells part", "rephrase"),
      ("use simple words to explain how antibiotics work", "build_on"),
      ("highlight the differences between mRNA and traditional vaccines", "build_on"),
      ("be less scary about it, my kid is reading over my shoulder", "rephrase"),
      ("number the steps of how the immune system learns", "rephrase"),
      ("list the vaccines a newborn gets in the UK", "build_on"),
      ]),
    ("sv-planets", "tell me about the solar system",
     "The solar system has the Sun at its centre and eight planets: Mercury, Venus, Earth, Mars, Jupiter, Saturn, "
     "Uranus and Neptune. There are also dwarf planets like Pluto, moons, asteroids and comets. The four inner planets "
     "are rocky; the four outer ones are giants made mostly of gas or ice.",
     [("number the planets by size", "build_on"),
      ("bold the planet names", "rephrase"),
      ("put the dwarf planets in a separate sentence", "rephrase"),
      ("label the layers of the Earth for my homework", "new_topic"),
      ("give me the distances first, then the rest", "rephrase"),
      ("format the answer as a table with one row per planet", "rephrase"),
      ("be more careful crossing the road, the sign says. what does that mean legally?", "new_topic"),
      ("highlight the main events of the space race", "new_topic"),
      ]),
    ("sv-sql", "what's the difference between inner join and left join",
     "An INNER JOIN returns only the rows that have matching values in both tables. A LEFT JOIN returns all rows from "
     "the left table, plus the matching rows from the right table; where there is no match, the right table's columns "
     "are NULL.",
     [("use an example with two small tables", "rephrase"),
      ("put the syntax first", "rephrase"),
      ("format the keywords as code", "rephrase"),
      ("format a date as yyyy-mm-dd in postgres?", "new_topic"),
      ("give me the query for a full outer join first", "build_on"),
      ("specific heat of copper?", "new_topic"),
      ("use plain words, I'm not a developer", "rephrase"),
      ("number the rows in a select, how?", "build_on"),
      ]),
    ("sv-essay", "give me an outline for an essay on climate change",
     "1. Introduction: what climate change is and why it matters\n2. Causes: greenhouse gases, deforestation\n3. "
     "Effects: rising temperatures, sea levels, extreme weather\n4. Solutions: renewable energy, policy, individual "
     "action\n5. Conclusion",
     [("be more specific in point 4", "rephrase"),
      ("label each section with how many words it should have", "rephrase"),
      ("give me the thesis statement first", "rephrase"),
      ("be less afraid of public speaking, any tips?", "new_topic"),
      ("highlight the arguments a skeptic would attack", "rephrase"),
      ("use simple words to write the introduction", "build_on"),
      ("put the main causes of the french revolution in order", "new_topic"),
      ("bold move to write about this, my teacher is a skeptic lol", "small_talk"),
      ]),
    ("sv-recipe", "how do I make guacamole",
     "Mash 2 ripe avocados with the juice of half a lime and a pinch of salt. Stir in finely chopped onion, tomato, "
     "coriander and a little chilli. Taste and adjust the lime and salt.",
     [("number the steps please", "rephrase"),
      ("put the ingredients first as a list", "rephrase"),
      ("give me the quantities in grams", "rephrase"),
      ("give me the salsa recipe first, the guac can wait", "new_topic"),
      ("highlight the step people usually get wrong", "rephrase"),
      ("use fewer ingredients, I only have avocados and lime", "rephrase"),
      ("number the best taco places in Austin", "new_topic"),
      ("label the fridge shelves, what goes where?", "new_topic"),
      ]),
    ("sv-running", "how do I start running",
     "Start with run-walk intervals: for example, 1 minute of easy running and 2 minutes of walking, repeated 8 times, "
     "three times a week. Add a little running time each week, and keep the pace easy enough to talk.",
     [("be more consistent with my sleep, how?", "new_topic"),
      ("use a heart rate monitor or not?", "build_on"),
      ("give me the marathon world record first, just curious", "new_topic"),
      ("number of calories burned running 5k?", "build_on"),
      ("highlight the best running shoes for flat feet", "build_on"),
      ]),
]
