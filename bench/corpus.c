/*
 * bench/corpus.c — the text `quill bench` draws its prompts' token ids from: the target's own
 * /tokenize turns it into ids, and each prompt is --input-len ids drawn at random from the set
 * it yields (vLLM's random dataset draws from the whole vocabulary; ids a tokenizer actually
 * produces from prose keep the prompts to ordinary tokens on any model). Written for quill.
 */
#include "bench/bench-internal.h"

const char *const ql__bench_corpus[] = {
    "The harbour town woke before the sun. Fishing boats slipped out past the breakwater while the "
    "bakers pulled the first loaves from their ovens, and the smell of bread drifted down the narrow "
    "streets toward the water. By seven the market square was full of carts: apples and pears from "
    "the hill farms, cheeses wrapped in cloth, baskets of eggs, bundles of dried herbs, and a man who "
    "sold nothing but brass keys of every size.",
    "A decoding server spends most of its life waiting on memory. Each new token needs every weight "
    "of the model read once, so a single request is bounded by bandwidth, not arithmetic. Batching "
    "many requests together lets one pass over the weights serve them all, which is why continuous "
    "batching, paged key-value caches and careful scheduling matter more than clever kernels when the "
    "goal is throughput.",
    "In the spring of that year the river flooded twice. The second time it carried away the old "
    "wooden bridge, and for three months the village was cut in half: children on the north bank "
    "walked two miles upstream to reach the school, and the doctor crossed by ferry with her bag held "
    "above her head. When the new stone bridge opened in August, nobody could remember who had "
    "suggested the name, but everybody used it.",
    "Measure first, then change one thing, then measure again. A benchmark that mixes the warm-up "
    "with the measured run, or compares numbers taken on different days on a shared machine, tells "
    "you about the weather rather than the code. Alternate the two systems under test, record the "
    "load of the machine, and report the spread as well as the middle.",
    "She kept a notebook of questions she could not answer: why the tide tables printed in the "
    "newspaper were always a few minutes wrong, how the swallows knew when to leave, what the old "
    "lighthouse keeper had buried under the third step, and whether the number of grains of sand "
    "on the beach was even or odd. Over the years some questions were crossed out, and new ones "
    "took their place.",
    "To bake a simple loaf, mix five hundred grams of flour with ten grams of salt, seven grams of "
    "yeast and three hundred and fifty millilitres of warm water. Knead for ten minutes until the "
    "dough is smooth and elastic, cover it, and leave it in a warm place for an hour. Shape it, let "
    "it rise again for forty minutes, then bake at two hundred and twenty degrees for thirty minutes, "
    "until the base sounds hollow when tapped.",
    "Mathematics offers strange comforts. A prime number remains prime whatever the weather; the "
    "angles of a triangle on a flat page always add up to the same total; and a proof, once checked, "
    "does not need to be checked again tomorrow. Yet the same subject also holds questions that are "
    "easy to state and have resisted every attempt for centuries, such as whether every even number "
    "greater than two is the sum of two primes.",
    "The train left the city at dusk and ran north through farmland, past silos and level crossings "
    "with their red lights blinking, through small stations where nobody got on or off. In the "
    "dining car a waiter polished glasses that were already clean. Somewhere after midnight the "
    "track began to climb, the air grew colder against the window, and the first snow appeared on "
    "the slopes beside the line.",
    "Good error messages name the thing that was wrong, say what was expected, and suggest what to do "
    "next. Compare 'invalid input' with 'the port 99999 is out of range: expected an integer from 0 "
    "to 65535'. The second costs the programmer a minute to write and saves every user that minute "
    "many times over, which is a bargain few other lines of code can offer.",
    "Owls hunt mostly by sound. The feathers of their faces form a dish that gathers noise toward the "
    "ears, and in many species one ear sits higher than the other, so that a mouse moving under the "
    "snow can be located in height as well as direction. Their wing feathers have soft, comb-like "
    "edges that break up the turbulence of the air, which is why an owl passing a few feet away makes "
    "almost no sound at all.",
    "Questions, numbers and code: 1, 2, 3, 5, 8, 13, 21, 34, 55, 89. What is the capital of France? "
    "for (int i = 0; i < n; i++) sum += a[i] * b[i]; The meeting moved from Tuesday at 10:30 to "
    "Thursday at 14:00 (room 4B). Temperatures ranged from -3 to 27 degrees Celsius; prices rose "
    "by 4.5% in the last quarter. Email the report to the team before Friday!",
};

const size_t ql__bench_corpus_len = sizeof(ql__bench_corpus) / sizeof(ql__bench_corpus[0]);
