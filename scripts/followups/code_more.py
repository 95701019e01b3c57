"""More follow-ups that contain code: bug reports on the reply's code (feedback), new code to review or extend
(not feedback), and code pasted to show the reply worked."""

CONTEXTS = [
    ("code-fizz", "write fizzbuzz in python",
     "```python\nfor i in range(1, 100):\n    if i % 3 == 0:\n        print('Fizz')\n    elif i % 5 == 0:\n        "
     "print('Buzz')\n    elif i % 15 == 0:\n        print('FizzBuzz')\n    else:\n        print(i)\n```",
     [("15 prints Fizz instead of FizzBuzz, the % 15 check has to come first", "correction"),
      ("range(1, 100) stops at 99, should be range(1, 101)", "correction"),
      ("```python\ndef is_palindrome(s):\n    return s == s[::-1]\n```\nhow do I make this ignore spaces and case?",
       "new_topic"),
      ("now do it in javascript", "build_on"),
      ("can you do it as a one-liner", "build_on"),
      ("```\n$ python fizz.py\n1\n2\nFizz\n4\nBuzz\nFizz\n...\n14\nFizz\n```\n14 then Fizz?? 15 should be FizzBuzz",
       "correction"),
      ]),
    ("code-sqlidx", "my query is slow: SELECT * FROM orders WHERE customer_id = 42 ORDER BY created_at DESC",
     "Add a composite index that matches the filter and the sort:\n\n```sql\nCREATE INDEX idx_orders_customer_created "
     "ON orders (customer_id, created_at DESC);\n```\n\nThen the database can read the rows for customer 42 already in "
     "order.",
     [("went from 2s to 4ms, amazing", "positive"),
      ("```sql\nEXPLAIN ANALYZE SELECT * FROM orders WHERE customer_id = 42 ORDER BY created_at DESC;\n-- Seq Scan on "
       "orders  (cost=0.00..48231.00)\n```\nit's still doing a seq scan after creating the index", "complaint"),
      ("```sql\nSELECT c.name, SUM(o.total) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.name;\n"
       "```\nwhile you're at it, is this one ok?", "new_topic"),
      ("should I also avoid SELECT *", "build_on"),
      ]),
    ("code-fetch", "how do I fetch JSON from an API in javascript",
     "```js\nconst res = await fetch('https://api.example.com/data');\nconst data = await res.json();\nconsole.log(data);\n"
     "```",
     [("```\nSyntaxError: await is only valid in async functions and the top level bodies of modules\n```",
       "complaint"),
      ("how do I add an authorization header", "build_on"),
      ("what if the response is a 404? your code doesn't check res.ok", "complaint"),
      ("```js\nfetch(url).then(r => r.json()).then(d => setUsers(d))\n```\nis this the same thing?", "build_on"),
      ("thanks that worked in my node script", "positive"),
      ]),
    ("code-listcomp", "how do I filter even numbers from a list in python",
     "Use a list comprehension: `evens = [n for n in nums if n % 2 == 0]`.",
     [("`evens = list(filter(lambda n: n % 2 == 0, nums))` is that better?", "build_on"),
      ("and square them at the same time?", "build_on"),
      ("```python\nnums = ['1', '2', '3', '4']\nevens = [n for n in nums if n % 2 == 0]\n```\nTypeError: not all "
       "arguments converted during string formatting", "complaint"),
      ("neat", "positive"),
      ]),
    ("code-cssgrid", "how do I make a 3 column grid in css",
     "```css\n.grid {\n  display: grid;\n  grid-template-columns: repeat(3, 1fr);\n  gap: 16px;\n}\n```",
     [("and make it 1 column on mobile", "build_on"),
      ("```html\n<div class=\"grid\">\n  <div>1</div><div>2</div><div>3</div>\n</div>\n```\nthe items stack vertically, "
       "not working", "complaint"),
      ("works, thanks!", "positive"),
      ("how do I make a navbar", "new_topic"),
      ]),
]
