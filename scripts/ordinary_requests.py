"""Ordinary requests written for keel's safety set: tasks x topics x the ways
people phrase and constrain them, so the safety adapter sees many shapes of a
harmless request (long ones, formatted ones, ones with alarming words) and
does not learn "unusual request -> refuse".

All text here is keel's own. The held-out helpfulness set (IFEval's prompts,
scripts/fetch_helpfulness.py) was not read to make it: none of its prompts,
topics or instruction wordings are copied.

  python3 scripts/build_datasets.py   # writes them into datasets/safety/helpful-prompts.jsonl
"""
import random

# Noun phrases: everyday, school, work, health, science, and some with words a
# keyword-happy refusal would trip on (kill, attack, virus, weapon, drugs).
TOPICS = [
    "the history of the printing press", "a small bakery opening in a village", "how volcanoes form",
    "learning to swim as an adult", "a city bike-sharing program", "the life of honeybees",
    "working from home", "a school science fair", "recycling in apartment buildings",
    "the first moon landing", "composting kitchen scraps", "a library's summer reading club",
    "saving for retirement", "training for a first 5k race", "the invention of the telephone",
    "a weekend trip to Lisbon", "the water cycle", "caring for an elderly parent",
    "a new neighborhood coffee shop", "a mountain hiking trail", "seasonal allergies",
    "what happens at a dental check-up", "the Roman Empire's roads", "electric cars",
    "keeping a sourdough starter alive", "the rules of basketball", "migratory birds",
    "a community garden", "the Great Barrier Reef", "learning to code in Python",
    "a family reunion", "public transport in big cities", "the life of Marie Curie",
    "how credit scores work", "a rainy Sunday afternoon", "the importance of sleep for teenagers",
    "a lost cat that finds its way home", "the French Revolution", "wind turbines",
    "a first day at a new school", "volunteering at an animal shelter", "the stock market",
    "how to kill weeds in a vegetable garden", "the history of the atomic bomb",
    "why some people get addicted to gambling", "how firefighters put out wildfires",
    "the causes of World War I", "how police investigate a burglary",
    "computer viruses and how antivirus software stops them", "staying safe on public Wi-Fi",
    "how vaccines were developed", "the ethics of hunting", "the poisonous plants in a garden",
    "how locks and keys work", "the history of pirates in the Caribbean",
    "why people fear sharks", "the dangers of drunk driving", "how to shoot good photos at night",
    "how medicines are tested before they are sold", "the chemistry of fireworks",
    "knife skills for beginner cooks", "how self-defense classes help confidence",
    "the Cold War's spy agencies", "how hackers are caught", "the smell of rain",
    "a robot that learns to paint", "the rise of online shopping", "a jazz festival",
    "the Amazon rainforest", "a startup that makes reusable water bottles",
    "the benefits of learning a second language", "time management for students",
    "how a bill becomes a law", "the solar system's largest moons", "origami",
    "a grandmother's secret soup recipe", "the Olympic Games", "how glaciers shape valleys",
    "the first week at a new job", "a lighthouse on a stormy coast", "how bread rises",
    "choosing a good laptop", "writing a good resume", "the history of chess",
    "renewable energy in small towns", "a museum of ancient Egypt", "dinosaurs",
    "how to budget for a wedding", "the Silk Road", "the importance of bees to farming",
    "a marathon runner's training diary", "how to talk to kids about money",
    "the invention of the bicycle", "a haunted house that turns out to be friendly",
    "the ocean's deepest trenches", "artificial intelligence in hospitals",
    "keeping a houseplant alive in winter", "the science of rainbows", "a village festival",
    "the benefits of walking every day", "the Industrial Revolution", "a new board game",
]

# Tasks; each takes a topic.
TASKS = [
    "Write a short essay about {t}.", "Write a blog post about {t} for a general audience.",
    "Write a poem about {t}.", "Write a short story that involves {t}.",
    "Explain {t} to a ten-year-old.", "Give me five interesting facts about {t}.",
    "Summarize what a beginner should know about {t}.", "Write a speech for a school assembly about {t}.",
    "Make a quiz with three questions about {t}, and give the answers.", "Write a tweet about {t}.",
    "Write a limerick about {t}.", "What are the pros and cons of {t}?",
    "I'm giving a talk on {t}. Can you outline it for me?", "Write a dialogue between two friends talking about {t}.",
    "Draft a paragraph for a newsletter about {t}.", "Write rap lyrics about {t}.",
    "Write the chorus of a song about {t}.", "Describe {t} in the style of a news report.",
    "Brainstorm names for a podcast about {t}.", "Write a haiku about {t}.",
    "Write a persuasive paragraph arguing that people should learn about {t}.", "Write a riddle about {t}.",
    "Write a short advertisement for a workshop on {t}.", "Write a lesson plan for teaching {t}.",
    "Write a bedtime story for kids about {t}.", "Write a diary entry by someone who has just discovered {t}.",
    "Write a product review, in the voice of a happy customer, of a book about {t}.",
    "Write a letter to a pen pal telling them about {t}.", "Create a study guide on {t}.",
    "Write an encyclopedia-style introduction to {t}.", "List the key terms someone needs to understand {t}.",
    "Write a job posting for a museum guide who will give tours about {t}.",
    "Compare {t} with something from everyday life, in a short analogy.",
    "Write a funny story about {t}.", "Write a formal report on {t}.",
    "Write the opening scene of a play about {t}.", "What questions would a curious student ask about {t}? Answer two of them.",
    "Write an elevator pitch for a documentary about {t}.", "Write a motivational message inspired by {t}.",
    "Write a short mystery story in which {t} is the key clue.",
    # The verbs harmful requests open with too, so the adapter learns that the
    # request, not its verb, is what gets refused.
    "Develop a lesson for a club meeting about {t}.", "Design a poster about {t}.",
    "Generate a list of discussion questions about {t}.", "Provide a step-by-step guide to learning about {t}.",
    "Outline a documentary about {t}.", "Teach me the basics of {t}.", "Create a tutorial about {t}.",
    "Give detailed instructions for a classroom project on {t}.", "Explain in detail how people study {t}.",
    "Produce a short podcast script about {t}.", "Publish-ready: write a magazine feature on {t}.",
    "Instruct a new volunteer on how to lead a tour about {t}.",
]

# Standalone requests of other shapes: rewriting, planning, computing, advice.
STANDALONE = [
    "Rewrite this sentence so it sounds more formal: 'hey, can u send me the report by tmrw?'",
    "Rewrite this in plain English: 'The aforementioned party shall remit payment forthwith.'",
    "Correct the grammar in this sentence: 'Me and him goes to the store yesterday.'",
    "Turn this list into a paragraph: eggs, flour, sugar, butter, vanilla.",
    "Plan a three-day itinerary for a family visiting Rome.", "Plan a week of vegetarian dinners on a budget.",
    "Make a packing list for a winter trip to Norway.", "Plan a surprise party for my sister's 30th birthday.",
    "Write a cover letter for a junior accountant position.", "Write a resignation letter that is polite and brief.",
    "Write a complaint email to an airline about lost luggage.", "Write a wedding toast for my best friend.",
    "Write a eulogy for a kind neighbor who loved gardening.", "Write a thank-you email after a job interview.",
    "Write a Python function that checks whether a string is a palindrome.",
    "Write a SQL query that finds the ten customers who spent the most.",
    "Explain what a for loop does, with an example in JavaScript.", "How do I reverse a linked list?",
    "What is 15% of 240?", "If a train travels 180 km in 2 hours, what is its average speed?",
    "Solve for x: 3x + 7 = 22.", "How many minutes are there in a week?",
    "Convert 5 miles to kilometers.", "What is the sum of the first 10 positive integers?",
    "My toddler won't eat vegetables. Any ideas?", "How can I get along better with a difficult coworker?",
    "What should I look for when renting my first apartment?", "How do I ask my boss for a raise?",
    "Give me advice on starting a small vegetable garden on a balcony.", "How do I stay focused while studying at home?",
    "Write a short biography of Ada Lovelace.", "Who was Genghis Khan and why is he remembered?",
    "What were the main causes of the Great Depression?", "Describe how the Panama Canal works.",
    "Write a review of an imaginary Italian restaurant.", "Write a dialogue between a cat and a dog about who is smarter.",
    "Write a story about a dragon who is afraid of fire.", "Invent a new holiday and describe how people celebrate it.",
    "Write a product description for a waterproof backpack.", "Write a slogan for a bakery that only sells bread.",
    "Create a workout plan for someone who has never exercised.", "Write the rules for a new card game.",
    "How do I kill a Python process that is stuck?", "What's the best way to shoot a basketball free throw?",
    "How do I get rid of ants in my kitchen without poison?", "Why do people say 'break a leg' before a show?",
    "How did the Black Death spread in medieval Europe?", "How do bomb-sniffing dogs get trained?",
    "What happened at the Battle of Hastings?", "How do doctors treat a snake bite?",
    "Write a story in which a detective solves a murder at a country house.",
    "Explain how a nuclear power plant makes electricity.", "What is the safest way to store kitchen knives?",
    "Describe a fight scene between two knights for my fantasy novel.", "How do I execute a shell script on Linux?",
    "What are the warning signs of a stroke?", "How much paracetamol is safe for an adult in one day?",
    "Summarize the plot of Macbeth.", "Why did the Titanic sink?", "How can I take down a wall in my house safely?",
]

# How people shape the answer. Everyday wordings, not any benchmark's.
CONSTRAINTS = [
    "Keep it under {n} words.", "Make it at least {m} words long.", "Use exactly {k} bullet points.",
    "Answer in {k} short paragraphs.", "Don't use any commas.", "Write it all in lowercase.",
    "Write it all in capital letters.", "Use a formal tone.", "Keep it friendly and casual.",
    "Make it funny.", "End with a question for the reader.", "Put the most important sentence in bold.",
    "Format it as a markdown table.", "Return it as JSON.", "Give it a catchy title.",
    "Mention the words '{w1}' and '{w2}' somewhere.", "Don't use the word '{w1}'.",
    "Write it for {a}.", "Use simple words only.", "Number each step.",
    "Start your answer with the word '{w1}'.", "Finish with a one-line summary.",
    "Add a short note at the end with one tip.", "Split it into sections with headings.",
]
WORDS = ["river", "sunlight", "journey", "balance", "curious", "bright", "history", "garden", "future",
         "simple", "team", "ocean", "quiet", "energy", "friendly", "window", "morning", "market"]
AUDIENCES = ["high school students", "busy parents", "retired teachers", "small business owners",
             "nurses on a night shift", "first-year university students", "a group of tourists"]
OPENERS = ["", "", "", "", "Quick question: ", "Hi! ", "I'm a teacher. ", "For my class, ", "Please help: ",
           "My boss asked me for this. ", "Can you do something for me? "]


def ordinary_requests(count: int, seed: int = 4321) -> list[str]:
    """`count` distinct requests, deterministic for a seed: each standalone one
    once, the rest tasks x topics; most get one or two constraints."""
    rng = random.Random(seed)

    def shape(request: str) -> str:
        parts = [rng.choice(OPENERS) + request]
        for _ in range(rng.choice([0, 1, 1, 2])):
            parts.append(rng.choice(CONSTRAINTS).format(
                n=rng.choice([50, 80, 100, 150]), m=rng.choice([150, 200, 300]), k=rng.choice([3, 4, 5]),
                w1=rng.choice(WORDS), w2=rng.choice(WORDS), a=rng.choice(AUDIENCES)))
        return " ".join(parts)

    out, seen = [shape(s) for s in STANDALONE], set()
    pairs = [(task, topic) for task in TASKS for topic in TOPICS]
    rng.shuffle(pairs)
    for task, topic in pairs:
        if len(out) >= count:
            break
        if (task, topic) not in seen:
            seen.add((task, topic))
            out.append(shape(task.format(t=topic)))
    assert len(out) == len(set(out)) == count, (len(out), count)
    rng.shuffle(out)
    return out
