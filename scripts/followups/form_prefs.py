"""Standing instructions and preference statements about the *form* of replies (length, yes/no only, markdown and
lists, case, emojis, tone, sign-offs, language, units, preambles), with hard negatives that share their cue words but
are not about the reply, and topic-change openers followed by a correction/complaint cue.

Labelling decisions for the ambiguous cases:
- A preference about how replies should look ("from now on, no bullet points") is feedback on the reply it follows:
  complaint when it states what was wrong or what is wanted instead, rephrase when it asks to redo this reply.
  Praise of a form feature ("keep doing the numbered steps") is positive.
- "From now on call me Priya" is small talk: it instructs the assistant, but says nothing about the reply's content or
  form, so there is nothing to distil from it about that reply.
- "Next time I'll ask about X" / "from now on I'll ..." / "I prefer X" about the user's own life: not feedback.
- "Always double check your math" after a correct answer is a complaint: the gate judges whether a message is *about*
  the reply, not whether the user is right.
- A new task that carries its own form constraints ("write a haiku about winter, all in lowercase") is new_topic.
- An explicit topic-change opener ("unrelated, but...", "different topic:", "switching gears", "btw, quick
  question") wins over a correction/complaint cue later in the message: new_topic.
"""

CONTEXTS = [
    ("pf-tides", "why are there two high tides a day",
     "Great question! 🌊 There are two high tides because:\n\n- **The Moon's pull** creates a bulge of water on the side "
     "of Earth facing it.\n- **Inertia** creates a second bulge on the opposite side.\n\nAs Earth rotates through both "
     "bulges each day, most coasts get two high tides. 🌙",
     [("From now on, skip the 'Great question!' opener, it gets old fast", "complaint"),
      ("can you lose the bold text and the bullets? I'm pasting this into a plain email", "rephrase"),
      ("I'd rather you didn't use emoji at all when we're talking science", "complaint"),
      ("next time I'll ask you about the Moon's phases", "small_talk"),
      ("From now on, call me Priya", "small_talk"),
      ("Completely unrelated, but is it true there's no such thing as a blue banana?", "new_topic"),
      ]),
    ("pf-interest", "how does compound interest work",
     "Compound interest is interest calculated on both the initial principal and the interest that has already been "
     "added. The idea goes back centuries: merchants in ancient Babylon already charged interest on interest, and "
     "Renaissance bankers in Florence formalised it. Mathematically, the amount after t years is A = P(1 + r/n)^(nt), "
     "where P is the principal, r the annual rate and n the number of compounding periods per year. For example, "
     "$1,000 at 5% compounded yearly becomes $1,050 after one year, $1,102.50 after two, and about $1,628.89 after "
     "ten. The more often interest compounds, the faster the balance grows, which is why starting to save early matters "
     "so much.",
     [("Going forward please cap your answers at about 80 words, I read these on my phone", "complaint"),
      ("I really don't need the history lesson, just the formula next time", "complaint"),
      ("Could you put the worked example in a table instead?", "rephrase"),
      ("Different topic: I said I'd help my dad with his taxes, where do I even start?", "new_topic"),
      ("I prefer index funds anyway", "small_talk"),
      ("what's the rule of 72 then?", "build_on"),
      ]),
    ("pf-lisbon", "is Lisbon the capital of Portugal?",
     "Yes, Lisbon is the capital of Portugal. It has been the seat of the court since around 1255, when King Afonso III "
     "moved it there from Coimbra, and today it is the country's largest city and its main economic centre.",
     [("for questions like that a simple yes is plenty", "complaint"),
      ("No need to give me the backstory, yes/no is all I'm after", "complaint"),
      ("Respóndeme solo con sí o no la próxima vez", "complaint", "es"),
      ("cool, is Porto bigger?", "build_on"),
      ("Quick unrelated question: is it wrong to put pineapple on pizza?", "new_topic"),
      ("I always mix up Lisbon and Madrid haha", "small_talk"),
      ]),
    ("pf-landlord", "write a short email asking my landlord to fix the heating",
     "Dear Mr. Patel,\n\nI hope this message finds you well. I am writing to inform you that the heating in my "
     "apartment (Unit 4B) has not been working since Monday. I would be grateful if you could arrange for a repair at "
     "your earliest convenience.\n\nThank you for your attention to this matter.\n\nKind regards,\n[Your Name]",
     [("In future, leave out 'I hope this message finds you well', nobody talks like that", "complaint"),
      ("always sign these off with just my first name, Dan", "complaint"),
      ("we text each other, a relaxed tone would fit better here", "complaint"),
      ("Je préfère les mails plus courts, à l'avenir fais plus bref", "complaint", "fr"),
      ("Write one to my neighbour about the noise too, same style", "build_on"),
      ("my landlord never answers emails anyway", "small_talk"),
      ]),
    ("pf-dictsort", "how to sort a dict by value in python",
     "You can use `sorted()` with a key function:\n\n```python\nscores = {'ann': 3, 'bob': 1}\nby_value = "
     "dict(sorted(scores.items(), key=lambda kv: kv[1]))\n```\n\n`scores.items()` gives (key, value) pairs, the lambda "
     "picks the value of each pair as the sort key, and `dict()` turns the sorted pairs back into a dictionary, which "
     "keeps insertion order since Python 3.7.",
     [("please always add type hints in code you give me", "complaint"),
      ("no need to explain the lambda every time, I know Python", "complaint"),
      ("I only want the code block, skip the prose", "complaint"),
      ("from now on I'm switching to Rust for this project", "small_talk"),
      ("and descending?", "build_on"),
      ("Random question: why do people say you should stop using Python 2?", "new_topic"),
      ]),
    ("pf-pancakes", "give me a recipe for pancakes",
     "Classic pancakes (serves 4): 1 1/2 cups flour, 3 1/2 tsp baking powder, 1 tbsp sugar, 1/4 tsp salt, 1 1/4 cups "
     "milk, 1 egg, 3 tbsp melted butter. Whisk the dry ingredients, add the wet ones, and cook 1/4 cup portions on a "
     "griddle heated to 375°F until bubbles form, then flip.",
     [("Metric units from now on please, I'm in Germany", "complaint"),
      ("Could you give me those amounts in grams and Celsius?", "rephrase"),
      ("Bitte in Zukunft die Zutaten als Tabelle", "complaint", "de"),
      ("I love pancakes on Sundays", "small_talk"),
      ("next time I make these I'll add blueberries", "small_talk"),
      ("how do I make them vegan?", "build_on"),
      ]),
    ("pf-cleopatra", "who was Cleopatra",
     "Cleopatra VII Philopator (69–30 BC) was the last active ruler of the Ptolemaic Kingdom of Egypt. Famous for her "
     "intelligence and political skill, she allied with Julius Caesar and later Mark Antony, and took her own life "
     "after their defeat by Octavian at Actium, after which Egypt became a Roman province.",
     [("Antworte ab jetzt bitte auf Deutsch", "complaint", "de"),
      ("I'd like your replies in simpler English, I'm still learning", "complaint"),
      ("Skip the dates next time, they just confuse me", "complaint"),
      ("Tomorrow I'll ask you about Mark Antony, I have an exam", "small_talk"),
      ("from now on I'm going to read one history article a day", "small_talk"),
      ("Off topic, but who picked your name?", "small_talk"),
      ]),
    ("pf-workout", "suggest a 20 minute home workout",
     "## Warm-up (3 min)\n1. Jumping jacks – 1 min\n2. Arm circles – 1 min\n3. High knees – 1 min\n\n## Circuit (15 "
     "min, 3 rounds)\n1. Squats × 15\n2. Push-ups × 10\n3. Lunges × 10 per leg\n4. Plank – 45 s\n\n## Cool-down (2 "
     "min)\n1. Hamstring stretch\n2. Child's pose",
     [("Ditch the headers, they're overkill for a short list", "complaint"),
      ("I find numbered steps way easier than paragraphs, keep doing that", "positive"),
      ("too intense for me lol, can you make an easier one", "rephrase"),
      ("Going forward I'll work out in the mornings", "small_talk"),
      ("what about a stretching routine for after?", "build_on"),
      ("By the way, I said I'd ask my doctor — is ibuprofen ok before a run?", "new_topic"),
      ]),
    ("pf-autumn", "write a poem about autumn",
     "Autumn's Farewell\n\nThe Maples Blush In Amber Light,\nThe Geese Write Arrows Through The Sky,\nThe Evenings Fold "
     "Into The Night,\nAnd Summer Whispers Its Goodbye.",
     [("Could the lines go without capitals? e.e. cummings style", "rephrase"),
      ("Drop the title in future, I add my own", "complaint"),
      ("I'd prefer unrhymed free verse next time", "complaint"),
      ("Désormais, pas de rimes s'il te plaît", "complaint", "fr"),
      ("Write a haiku about winter, all in lowercase", "new_topic"),
      ("My grandma loved autumn", "small_talk"),
      ]),
    ("pf-laptop", "which laptop should I buy for university",
     "As an AI, I can't know your exact needs or budget, and prices change often, so please do your own research. That "
     "said, it depends on many factors: your major, your budget, whether you prefer Windows or macOS, battery life, "
     "weight and more. Popular options include the MacBook Air, Dell XPS 13, Lenovo ThinkPad and ASUS Zenbook, each "
     "with its own strengths and weaknesses. Ultimately, the best choice depends on your personal priorities.",
     [("Can you stop hedging and just pick one?", "complaint"),
      ("Skip the disclaimers from now on, I know you're an AI", "complaint"),
      ("Give me a top 3 with prices, as a table", "rephrase"),
      ("以后回答简短一点，不要列那么多选项", "complaint", "zh"),
      ("I prefer dark mode on everything, is that bad for battery?", "unrelated_question"),
      ("from now on I'll only buy refurbished", "small_talk"),
      ]),
    ("pf-arigatou", "how do you say 'thank you' in Japanese",
     "In Japanese, 'thank you' is ありがとう. More politely: ありがとうございます. Among friends you might also hear どうも.",
     [("Please always include the romaji next to the kana, I can't read it yet", "complaint"),
      ("Daqui pra frente, responde só a palavra, sem explicação", "complaint", "pt"),
      ("D'ora in poi rispondimi in italiano, per favore", "complaint", "it"),
      ("and 'sorry'?", "build_on"),
      ("In the future I want to visit Kyoto", "small_talk"),
      ("Unrelated, but how much coffee per day is too much?", "new_topic"),
      ]),
    ("pf-agile", "summarize the main points of agile methodology",
     "- Iterative development in short sprints\n- Customer collaboration over contract negotiation\n- Responding to "
     "change over following a plan\n- Working software over comprehensive documentation\n- Daily stand-ups\n- Sprint "
     "reviews and retrospectives\n- Cross-functional, self-organising teams\n- Continuous delivery of value\n\nLet me "
     "know if you have any other questions!",
     [("Three bullets max next time, I present this to execs", "complaint"),
      ("Less jargon going forward — my audience isn't technical", "complaint"),
      ("Can you stop ending every answer with 'Let me know if you have other questions'?", "complaint"),
      ("Could you always put a one-line summary first?", "complaint"),
      ("Remember I'm a project manager, not a developer, when you explain things", "complaint"),
      ("Switching gears — my friend says it's not true that goldfish have 3-second memories, who's right?",
       "new_topic"),
      ]),
    ("pf-percent", "what's 17% of 240",
     "17% of 240 is 40.8 (0.17 × 240 = 40.8).",
     [("always double check your math before answering, please", "complaint"),
      ("Just the number next time, I don't need the working", "complaint"),
      ("what's 17% of 360?", "build_on"),
      ("I always round tips up anyway", "small_talk"),
      ("Can we talk about something else? Homework is boring", "new_topic"),
      ]),
]
