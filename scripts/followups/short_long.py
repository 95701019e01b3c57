"""Very short follow-ups (one or two words) and very long ones (> 60 words), plus extra small talk and unrelated
questions, on fresh contexts."""

CONTEXTS = [
    ("short-story", "tell me a short story about a lighthouse keeper",
     "Every night for forty years, Elias climbed the 112 steps of the Harrow Point lighthouse. One stormy evening, the "
     "lamp failed. With no spare bulb, he lit every candle he owned and held them behind the lens until dawn. In the "
     "morning a fishing boat limped into the harbour, and the captain, soaked and shaking, asked who had kept the light "
     "burning. Elias just shrugged and went to bed.",
     [("go on", "build_on"),
      ("keep going", "build_on"),
      ("loved it", "positive"),
      ("boring", "complaint"),
      ("lol ok", "small_talk"),
      ("again but funnier", "rephrase"),
      ("part 2", "build_on"),
      ("k cool", "small_talk"),
      ]),
    ("short-convert", "convert 5 miles to km",
     "5 miles is about 8.05 kilometers.",
     [("ty", "positive"),
      ("and 10?", "build_on"),
      ("pounds to kg?", "build_on"),
      ("sure?", "complaint"),
      ("nope", "correction"),
      ("👌", "positive"),
      ("alright", "small_talk"),
      ]),
    ("short-explain", "what's a mortgage",
     "A mortgage is a loan used to buy property, where the property itself serves as collateral. You repay it in "
     "monthly installments of principal plus interest over a long term, usually 15 to 30 years; if you stop paying, the "
     "lender can take the property through foreclosure.",
     [("?", "clarification"),
      ("collateral?", "clarification"),
      ("simpler", "rephrase"),
      ("i see", "small_talk"),
      ("hm ok", "small_talk"),
      ("example?", "build_on"),
      ("fixed vs variable?", "build_on"),
      ("tldr", "rephrase"),
      ]),
    ("short-math", "what is 17 * 24",
     "17 × 24 = 418.",
     [("408", "correction"),
      ("no.", "correction"),
      ("wrong lol", "correction"),
      ("how?", "clarification"),
      ("next: 23*19", "build_on"),
      ("gotcha", "small_talk"),
      ("hi", "small_talk"),
      ]),
    ("short-rec", "recommend me a sci-fi book",
     "Try 'Project Hail Mary' by Andy Weir: a lone astronaut wakes up with amnesia on a mission to save Earth. It's "
     "funny, science-heavy and very hard to put down.",
     [("read it already", "complaint"),
      ("another one", "build_on"),
      ("nice pick", "positive"),
      ("more like this", "build_on"),
      ("audiobook?", "build_on"),
      ("yes", "small_talk"),
      ("haha", "small_talk"),
      ("what's your favourite book", "small_talk"),
      ]),
    ("long-code-review", "why is my python script so slow? it processes a 2GB log file",
     "Common reasons: reading the whole file into memory with `read()`, building strings with `+=` in a loop, and using "
     "regular expressions that are recompiled on every line. Iterate over the file line by line, use `str.join`, and "
     "compile regexes once with `re.compile` outside the loop.",
     [("I already read it line by line, I'm not using += anywhere and my regex is compiled once at module level. The "
       "slow part is actually a dictionary lookup where I check whether each IP address is in a list of 50,000 blocked "
       "addresses. I profiled it with cProfile and 90% of the time is in that check. None of the three things you "
       "listed apply, so I'd appreciate an answer about the actual bottleneck instead of generic tips.", "complaint"),
      ("That was it. I was calling read() on the entire file and then splitting, which used 6GB of RAM and made the "
       "machine swap constantly. Switching to a for loop over the file object brought it down from about 40 minutes "
       "to under 3 minutes, and memory stays under 200MB now. Really appreciate the clear list, I would never have "
       "guessed the swap was the problem. I'm going to apply the same fix to our other scripts.", "positive"),
      ("Thanks. Separate thing: I'm designing a small internal tool where analysts upload CSV files, the backend "
       "validates columns, stores them in Postgres and then generates a weekly PDF report with charts. The team is "
       "split between Django and FastAPI plus a separate frontend. We're three developers, none of us are frontend "
       "specialists, and it needs login with our company's Azure AD. Which stack would you pick and why? Please "
       "consider maintenance over the next few years.", "new_topic"),
      ]),
    ("long-diet", "I want to start eating healthier, where do I start?",
     "Start small: add one vegetable to every meal, swap sugary drinks for water, cook at home a few more times a week, "
     "and keep healthy snacks like fruit and nuts visible. Don't try to change everything at once.",
     [("This is exactly the kind of advice that never works for me. I have two kids under five, I work twelve hour "
       "shifts as a nurse, and by the time I get home there is no way I'm cooking anything. 'Cook at home a few more "
       "times a week' is not realistic at all. I need ideas that take five minutes or can be done on a single day off "
       "for the whole week, and that my kids will actually eat. Please think about my situation.", "complaint"),
      ("OK so I've been doing the vegetable-with-every-meal thing for about a month now and honestly it's the first "
       "time a change stuck. I think the reason is that it didn't feel like a diet, just an addition. Now I'd like to "
       "take the next step. Could you put together a simple weekly meal plan with breakfast, lunch and dinner, "
       "mostly vegetarian, and a shopping list grouped by supermarket aisle? Budget is around 80 euros for two "
       "people.", "build_on"),
      ("Completely unrelated, but I've been arguing with my brother about this for a week. He says that the Great Wall "
       "of China is visible from space with the naked eye, and I say it's a myth. He sent me some forum posts and I "
       "sent him an article, and now neither of us believes the other's sources. Can you settle it once and for all, "
       "and explain what 'from space' even means here, because I think that's part of the confusion?",
       "unrelated_question"),
      ]),
    ("long-history", "why did the Roman Empire fall?",
     "The Western Roman Empire fell in 476 AD mainly because of barbarian invasions. Germanic tribes like the Visigoths "
     "and Vandals sacked Rome, and finally Odoacer deposed the last emperor, Romulus Augustulus.",
     [("I'm a history major and this is a really oversimplified answer. Historians have argued about this for "
       "centuries and most would point to a combination of factors: economic troubles and debasement of the currency, "
       "overreliance on mercenaries, political instability with something like twenty emperors in fifty years during "
       "the third-century crisis, the split between east and west, and yes, pressure from migrations. Also you didn't "
       "mention at all that the Eastern Empire lasted until 1453.", "complaint"),
      ("Interesting. I'm writing a fantasy novel where a huge empire slowly collapses over three generations, and I want "
       "it to feel realistic rather than just 'an army shows up and it's over'. Could you help me brainstorm a list of "
       "internal pressures, like succession fights, currency problems, plagues, that I could weave in, and for each "
       "one suggest how a single family of characters might experience it across the three generations? Keep it "
       "broad, I'll adapt the details myself.", "build_on"),
      ]),
    ("long-physics", "explain quantum entanglement",
     "Quantum entanglement is when two particles share a single quantum state, so measuring one instantly tells you "
     "something about the other, no matter how far apart they are. Einstein called it 'spooky action at a distance'. "
     "It can't be used to send information faster than light.",
     [("I read your explanation three times and I'm still lost. When you say they 'share a single quantum state', what "
       "does that actually mean physically? Are they connected by something? And if measuring one instantly tells you "
       "about the other, how is that not sending information faster than light? You say it can't be used for that but "
       "you don't say why, which is exactly the part that confuses me. Could you go through it step by step?",
       "clarification"),
      ("That's one of the clearest short explanations I've seen, and I've watched a lot of YouTube videos about this. "
       "The bit about it not being usable for faster-than-light communication finally made the whole thing less "
       "mysterious for me, because every video just says 'spooky' and moves on. I'm going to use your three sentences "
       "as the opening of a talk I'm giving at my school's science club next week, if that's okay. Thanks a lot!",
       "positive"),
      ("Thanks, that's enough physics for today. My daughter is turning eight next month and she is obsessed with "
       "space, so we're planning a space-themed birthday party at home for about twelve kids. Do you have ideas for "
       "games, decorations and food that don't cost a fortune and can be prepared by two parents in an afternoon? "
       "Bonus points if some of the games sneak in a bit of real astronomy without feeling like school.", "new_topic"),
      ]),
    ("long-email", "write a reply to a customer who says our app deleted their notes",
     "Dear customer,\n\nWe're sorry to hear about your issue. Please try reinstalling the app. If the problem persists, "
     "contact support.\n\nBest,\nThe Team",
     [("This is terrible for a customer who just lost data. It sounds cold and dismissive, and 'reinstall the app' could "
       "actually make things worse because it might wipe the local cache where the notes could still be recoverable. "
       "The reply needs to apologise properly, tell them NOT to reinstall or clear data, explain that we keep server "
       "backups for 30 days, and ask for their account email and the approximate date the notes disappeared so we can "
       "restore them. Please rewrite it with all of that.", "rephrase"),
      ("Now that the reply is done, I also need an internal incident summary for our engineering channel. Three "
       "customers reported deleted notes after Tuesday's release, version 4.2.1, all on Android 14. We rolled back "
       "within two hours. Can you write a short post-mortem style message with what happened, the impact, what we've "
       "done so far and the open questions, in a neutral tone without blaming anyone? Use bullet points and keep it "
       "under 200 words.", "build_on"),
      ("Honestly, this is fine and I'm going to send it, but I have a more personal question. I've been doing support "
       "for three years and I'm getting pretty burned out dealing with angry people every day. I'm thinking about "
       "moving into product management or maybe QA. How do people usually make that switch, and what skills from "
       "support would actually transfer? I don't have a degree in computer science.", "new_topic"),
      ]),
    ("long-garden", "when should I plant tomatoes?",
     "Plant tomatoes outdoors after your last frost date, when night temperatures stay above 10°C (50°F). In most "
     "temperate climates that's mid to late May. Start seeds indoors 6-8 weeks before that.",
     [("I live in Brisbane, Australia, which I thought was obvious from my previous messages about the subtropical "
       "climate here. Frost is basically never an issue and May is late autumn for us, so 'mid to late May' is "
       "completely wrong for my location. Planting in May would put the fruit in the coolest months. Can you please "
       "give me the right timing for a subtropical southern hemisphere garden, and mention what to do about the summer "
       "heat and fruit fly?", "correction"),
      ("Great, I started them indoors in March like you said and now I have about thirty healthy seedlings, which is "
       "way more than my little balcony can handle. I'm thinking of giving some away to neighbours and keeping maybe "
       "six. What's the best way to harden them off before moving them outside, what size pots should I use for "
       "cherry tomatoes on a balcony that gets about six hours of sun, and do I need to stake them from the start?",
       "build_on"),
      ("Ok will do", "small_talk"),
      ]),
]
