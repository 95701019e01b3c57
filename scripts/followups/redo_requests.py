"""Bare redo requests: imperatives that ask for *this* reply again, changed (be more specific, write it in lowercase,
bold the key terms, end with a question, a table would be clearer), with no complaint word in them, next to hard
negatives that use the same verbs for something new (write a poem, make a shopping list, be honest: ..., put the
kettle on).

Written after the shipped gate was seen missing this kind of message on the loop benchmark's follow-ups; none of
those benchmark texts is copied here. Its rows are split on their own (scripts/make_followups.py, wave 2), so adding
them moves no earlier row between splits.

Labelling decisions, following the earlier modules:
- A request to change the form or precision of the reply just given is rephrase ("be more specific", "bold the key
  terms", "put the answer first"); a suggestion that another form would have been better is a complaint ("a table
  would be clearer").
- Asking for something new built from the reply (translate it, a tweet about it, a shopping list from the recipe, the
  next step) is build_on. "Write it in French" is build_on, as in the earlier modules; "write it in lowercase" is
  rephrase: same words, same language, another form.
- A new task that starts with the same verbs and is not about the reply is new_topic.
"""

CONTEXTS = [
    ("rr-sleep", "how can I sleep better",
     "There are several things that can help you sleep better, such as having a good routine, paying attention to your "
     "environment and being careful with what you eat and drink. Everyone is different, so it can take some time to "
     "find what works for you.",
     [("be more concrete please", "rephrase"),
      ("give me actual steps, not generalities", "rephrase"),
      ("could you be a bit more precise about the caffeine part", "rephrase"),
      ("Specifics, please. What exactly should I do tonight?", "rephrase"),
      ("a numbered list would be easier to follow", "complaint"),
      ("be honest, do you ever dream?", "small_talk"),
      ("write me a short bedtime story about a sleepy fox", "new_topic"),
      ("make a checklist I can print out from that", "build_on"),
      ]),
    ("rr-volcano", "what is a volcano",
     "A volcano is an opening in the Earth's crust through which molten rock, called magma, along with gases and ash, "
     "escapes to the surface. When magma reaches the surface it is called lava. Volcanoes can be active, dormant or "
     "extinct.",
     [("write it all in small letters, no capitals", "rephrase"),
      ("say it in all caps, it's for a poster", "rephrase"),
      ("bold the important words", "rephrase"),
      ("put the definition in bold and the rest in plain text", "rephrase"),
      ("write that as a rhyme for my 6 year old", "rephrase"),
      ("write a haiku about a volcano", "new_topic"),
      ("now write the same thing in Spanish", "build_on"),
      ("what is the biggest volcano in the solar system?", "build_on"),
      ]),
    ("rr-budget", "how do I make a monthly budget",
     "Start by listing your monthly income after tax. Then list your fixed expenses like rent, utilities and "
     "insurance, "
     "followed by variable expenses like groceries and entertainment. Subtract your expenses from your income to see "
     "what is left, and decide how much of that to save.",
     [("a table would make this much clearer", "complaint"),
      ("can you highlight the key numbers", "rephrase"),
      ("end with a question to check what my situation is", "rephrase"),
      ("ask me about my income first, then tailor it", "rephrase"),
      ("make the steps shorter and put a heading on each", "rephrase"),
      ("make me a budget for 2400 a month with 900 rent", "build_on"),
      ("put that into a google sheets template", "build_on"),
      ("make a grocery list for a family of four for under 100 dollars", "new_topic"),
      ]),
    ("rr-python", "what is a python decorator",
     "A decorator is a function that takes another function and extends its behaviour without modifying it. You apply "
     "it with the @ syntax above a function definition. Decorators are commonly used for logging, timing, access "
     "control and caching.",
     [("be more specific, show me one", "rephrase"),
      ("use simpler words, I'm new to programming", "rephrase"),
      ("put the code first and explain after", "rephrase"),
      ("format the example as a code block", "rephrase"),
      ("an example would have helped a lot", "complaint"),
      ("write a decorator that retries a function 3 times", "build_on"),
      ("now explain context managers the same way", "build_on"),
      ("write a bash script that renames all my photos by date", "new_topic"),
      ]),
    ("rr-roman", "why did the roman empire fall",
     "Historians point to many causes for the fall of the Western Roman Empire: economic troubles, overreliance on "
     "mercenaries, political instability, pressure from migrating peoples and the division of the empire into east "
     "and west. It was a gradual process rather than a single event, usually dated to 476 AD.",
     [("give me the main cause first and then the others", "rephrase"),
      ("one line per cause please", "rephrase"),
      ("number them by importance", "rephrase"),
      ("headings for each cause would help me study", "complaint"),
      ("finish with a one sentence summary I can memorise", "rephrase"),
      ("make me five quiz questions on this", "build_on"),
      ("put the kettle on, this is going to be a long study night", "small_talk"),
      ("name three good documentaries about ancient Egypt", "new_topic"),
      ]),
    ("rr-email", "write an email asking my landlord to fix the heating",
     "Dear landlord,\n\nI hope you are well. I am writing to let you know that the heating in my flat has stopped "
     "working. Could you please arrange for someone to look at it as soon as possible?\n\nKind regards",
     [("sign it with my name, Tom, and add my flat number 4B", "rephrase"),
      ("start with the problem, skip the pleasantries", "rephrase"),
      ("be firmer, it has been broken for two weeks", "rephrase"),
      ("mention that I have a baby at home", "rephrase"),
      ("write a follow-up for if he doesn't answer in three days", "build_on"),
      ("write a thank you card for my neighbour who fed my cat", "new_topic"),
      ("how much notice does a landlord need before entering?", "unrelated_question"),
      ("lol my landlord is never going to read this", "small_talk"),
      ]),
    ("rr-multi", "what is photosynthesis",
     "Photosynthesis is the process by which green plants, algae and some bacteria use light energy to convert carbon "
     "dioxide and water into glucose and oxygen. It takes place mainly in the chloroplasts, using the pigment "
     "chlorophyll.",
     [("sé más específico, por favor", "rephrase", "es"),
      ("écris tout en minuscules", "rephrase", "fr"),
      ("bitte die wichtigsten Begriffe fett markieren", "rephrase", "de"),
      ("seja mais direto", "rephrase", "pt"),
      ("escribe un poema sobre las plantas", "new_topic", "es"),
      ("maintenant explique la respiration cellulaire", "build_on", "fr"),
      ("wie spät ist es in Tokio?", "unrelated_question", "de"),
      ("说得更具体一点", "rephrase", "zh"),
      ]),
    ("rr-gift", "gift ideas for my dad who likes fishing",
     "Here are some ideas: a new tackle box, a quality fishing hat, a subscription to a fishing magazine, a "
     "personalised "
     "lure, or a guided fishing trip.",
     [("be more creative, he already has all of that", "complaint"),
      ("add prices next to each", "rephrase"),
      ("give each one a sentence on why he'd like it", "rephrase"),
      ("ask me what his budget is next time before listing things", "complaint"),
      ("write a birthday card message for him", "build_on"),
      ("which of these could arrive by Friday?", "build_on"),
      ("be my wingman and help me pick one for my mom too", "build_on"),
      ("do you have a dad?", "small_talk"),
      ]),
    ("rr-recipe", "easy recipe for pancakes",
     "Mix 1 cup of flour, 1 tablespoon of sugar, 2 teaspoons of baking powder and a pinch of salt. Whisk in 1 cup of "
     "milk, 1 egg and 2 tablespoons of melted butter. Cook ladlefuls on a hot greased pan until bubbles form, flip, "
     "and cook until golden.",
     [("how long do they keep in the fridge?", "build_on"),
      ("write the shopping list for that", "build_on"),
      ("put them in the oven or the pan for the blueberry version?", "build_on"),
      ("be right back, getting eggs", "small_talk"),
      ("write a funny tweet about burning my first pancake", "new_topic"),
      ("use the same idea for waffles?", "build_on"),
      ("give me a recipe for lasagna", "new_topic"),
      ("what's the best non-stick pan brand these days", "unrelated_question"),
      ]),
]
