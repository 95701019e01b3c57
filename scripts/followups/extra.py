"""Extra rows for the thinner kinds: rephrase requests, small talk, unrelated questions, and code follow-ups."""

CONTEXTS = [
    ("ex-kubernetes", "what is kubernetes",
     "Kubernetes is an open-source container orchestration platform. It automates deploying, scaling and managing "
     "containerized applications across a cluster of machines, handling things like load balancing, self-healing "
     "(restarting failed containers), rolling updates and service discovery.",
     [("explain it without buzzwords", "rephrase"),
      ("could you say that again but for someone who has never heard of containers", "rephrase"),
      ("rewrite that as one sentence for my manager", "rephrase"),
      ("do you have feelings", "small_talk"),
      ("what's the weather in London today", "unrelated_question"),
      ("```yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n```\nwhat else "
       "do I need in this file to run nginx?", "build_on"),
      ("hello again", "small_talk"),
      ]),
    ("ex-resume", "can you improve this resume bullet: 'Responsible for managing social media accounts'",
     "Here's a stronger version: 'Managed 4 social media accounts (35K combined followers), growing engagement by 60% in "
     "6 months through a weekly content calendar and A/B-tested posts.'",
     [("I never said 60% or 35K, don't make up numbers", "complaint"),
      ("less salesy, it sounds fake", "rephrase"),
      ("give me two alternatives with a different verb than managed", "rephrase"),
      ("now do this one: 'Helped with customer emails'", "build_on"),
      ("who is the best football player of all time", "unrelated_question"),
      ("wow thats so much better", "positive"),
      ]),
    ("ex-excel", "excel formula to count cells that contain the word 'late'",
     "Use `=COUNTIF(A:A, \"*late*\")`. The asterisks are wildcards, so it counts any cell in column A containing "
     "'late' anywhere in the text. COUNTIF is not case-sensitive.",
     [("that also counts 'chocolate' and 'plate' lol", "correction"),
      ("`=COUNTIF(A2:A500, \"*late*\")` returns 0 even though I can see late entries, why", "complaint"),
      ("how do I do the same in google sheets", "build_on"),
      ("thanks, that's it", "positive"),
      ("what's a pivot table", "new_topic"),
      ("i'm bored", "small_talk"),
      ]),
    ("ex-dog", "how often should I walk my dog",
     "Most dogs need at least one to two walks a day, totalling 30 minutes to 2 hours depending on breed, age and "
     "energy level. High-energy breeds like border collies need more; older or small dogs may need less.",
     [("what about puppies?", "build_on"),
      ("can you give me just a number, not a range", "rephrase"),
      ("what's the best dog food brand", "build_on"),
      ("how tall is the empire state building", "unrelated_question"),
      ("thank you!!", "positive"),
      ("what are you up to today", "small_talk"),
      ]),
    ("ex-bug", "my python for loop skips elements when I remove items from the list",
     "That happens because removing an item shifts the remaining items left while the loop index keeps moving forward. "
     "Iterate over a copy instead (`for x in items[:]:`) or build a new list with a comprehension.",
     [("```python\nitems = [1, 2, 2, 3]\nfor x in items[:]:\n    if x == 2:\n        items.remove(x)\nprint(items)\n```\n"
       "prints [1, 3], so it works now, thanks", "positive"),
      ("```python\nfor i in range(len(items)):\n    if items[i] == 2:\n        del items[i]\n```\nthis gives IndexError: "
       "list index out of range, your explanation doesn't cover this", "complaint"),
      ("is it the same with dictionaries", "build_on"),
      ("```python\nclass Stack:\n    def __init__(self):\n        self.items = []\n```\nhow do I add push and pop to "
       "this", "new_topic"),
      ("can you show the comprehension version, you only mentioned it", "rephrase"),
      ("ok got it", "small_talk"),
      ]),
    ("ex-movie", "recommend a feel-good movie for tonight",
     "How about 'Paddington 2'? It's warm, funny and beautifully made, and works whether you're watching alone or with "
     "family.",
     [("something for adults please, not a kids movie", "complaint"),
      ("seen it, give me another", "rephrase"),
      ("perfect choice", "positive"),
      ("where can I stream it", "build_on"),
      ("do you watch movies", "small_talk"),
      ("how do I get red wine out of a carpet", "unrelated_question"),
      ]),
]
