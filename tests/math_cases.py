"""Equivalence table for rewards.math_equal: (prediction, gold, expected). Written for this project.

The grader is Math-Verify; where its verdict differed from our first table, the family and the decision:
- decimals that approximate an exact answer (3.1416 vs \\pi, 0.33333 vs 1/3, 1.4142, 6.2832, 2.71828): accepted,
  wrong (Math-Verify rounds to 6 places; MATH-style golds are exact);
- degrees vs radians (\\pi/2 vs 90^\\circ): accepted, different; a degree mark on a number is dropped (90° = 90);
- i^2 = -1: accepted, different (i is a symbol to Math-Verify); case of symbols (3R^2 = 3r^2): accepted, equal;
- "(a, b) = (1, 2)" equals "(1, 2)": accepted, equal (the right-hand side of an assignment is the answer);
- a column vector is not a tuple, "C)" is not a choice letter, "18.90 dollars": accepted, different;
- inequalities vs intervals (x > 2 = (2, \\infty)): configured (allow_set_relation_comp);
- unicode symbols (√, ∞, π, °), 1e3 notation, \\$ and \\varnothing: a few lines of pre-normalisation (rewards._texts).
"""

CASES = [
    # integers, signs, decimals, exact vs tolerant numbers
    ('42', '42', True), ('42', '43', False), ('-7', '-7', True), ('-7', '7', False), ('+5', '5', True),
    ('042', '42', True), ('42.0', '42', True), ('42.00', '42', True), ('204.01', '204', False), ('0.5', '0.50', True),
    ('.5', '0.5', True), ('0.5', '0.6', False), ('3.14159', '3.1416', False), ('.35626', '.35625', False),
    ('3.1416', '\\pi', False), ('3.14', '\\pi', False), ('\\frac{20001}{\\pi}', '\\frac{20000}{\\pi}', False),
    ('1.25', '\\frac{5}{4}', True), ('0.333', '\\frac{1}{3}', False), ('0.33333', '\\frac{1}{3}', False),
    ('0.0000672', '.0000672', True), ('0.15', '0.150', True), ('-0.5', '-\\frac{1}{2}', True),
    ('-0.5', '\\frac{1}{2}', False), ('1000000', '10^6', True),
    # fractions
    ('\\frac{1}{2}', '0.5', True), ('\\dfrac{1}{2}', '\\frac12', True), ('\\tfrac{3}{4}', '3/4', True),
    ('\\frac 59', '\\frac{5}{9}', True), ('\\frac9{19}', '9/19', True), ('\\frac43', '\\frac{4}{3}', True),
    ('\\frac{2}{4}', '\\frac{1}{2}', True), ('\\frac{1}{3}', '\\frac{1}{4}', False), ('1/2', '2/4', True),
    ('\\frac{-3}{8}', '-\\frac{3}{8}', True), ('\\frac{3}{-8}', '-\\frac38', True), ('\\frac{14}{3}', '4.67', False),
    ('\\frac{270}7', '\\frac{270}{7}', True), ('\\cfrac{1}{2}', '0.5', True), ('{\\frac{1}{2}}', '1/2', True),
    # mixed numbers
    ('1\\frac{4}{5}', '\\frac{9}{5}', True), ('137 \\frac{1}{2}', '137.5', True), ('2\\frac{1}{2}', '1', False),
    ('-1\\frac{1}{2}', '-1.5', True),
    # boxed, dollars, spacing, \left \right
    ('\\boxed{\\frac{1}{2}}', '0.5', True), ('$\\frac{1}{2}$', '\\frac12', True), ('\\boxed{5}', '6', False),
    ('\\$32,\\!348', '32348', True), ('\\$18.90', '18.9', True), ('18.90 dollars', '\\$18.90', False),
    ('\\left( 3, \\frac{\\pi}{2} \\right)', '(3,\\frac{\\pi}{2})', True), ('\\!5', '5', True),
    ('3\\,\\sqrt{2}', '3\\sqrt2', True), ('\\displaystyle\\frac{1}{2}', '1/2', True),
    # percent and degrees
    ('5\\%', '5', True), ('5%', '0.05', True), ('0.05', '5\\%', True), ('50\\%', '0.5', True), ('5\\%', '6', False),
    ('90^\\circ', '90', True), ('90^{\\circ}', '90', True), ('90°', '90', True),
    ('\\frac{\\pi}{2}', '90^\\circ', False), ('30', '30^\\circ', True), ('30^\\circ', '\\frac{\\pi}{6}', False),
    ('60^\\circ', '30^\\circ', False), ('\\frac{270}7\\text{ degrees}', '\\frac{270}{7}', True),
    # units in text
    ('10 \\text{ cm}', '10', True), ('864 \\mbox{ inches}^2', '864', True), ('15\\mbox{ cm}^2', '15', True),
    ('5.4 \\text{ cents}', '5.4', True), ('12 units', '12', True), ('12 square units', '12', True),
    ('7 \\text{ cm}', '8', False), ('4 \\text{ days}', '4', True), ('20 \\mathrm{km}', '20', True),
    # thousands separators vs tuples
    ('1,000', '1000', True), ('10,\\!080', '10080', True), ('11,\\! 111,\\! 111,\\! 100', '11111111100', True),
    ('58,500', '58500', True), ('1 000 000', '1000000', True), ('1,2', '12', False), ('1,2', '1, 2', True),
    ('1,000', '1', False),
    # scientific notation and powers
    ('10^{3}', '1000', True), ('1e3', '1000', True), ('1.5 \\times 10^{3}', '1500', True), ('2.5e-3', '0.0025', True),
    ('2^{10}', '1024', True), ('10^3', '10^4', False), ('3 \\cdot 10^{-2}', '0.03', True), ('2^{-1}', '0.5', True),
    # roots, pi, e, logs, trig, factorial, binomial
    ('2\\sqrt{3}', '\\sqrt{12}', True), ('\\sqrt{12}', '3\\sqrt{2}', False), ('11\\sqrt2', '11\\sqrt{2}', True),
    ('\\sqrt[3]{8}', '2', True), ('\\frac{\\sqrt{3}}{3}', '\\frac{1}{\\sqrt{3}}', True),
    ('\\sqrt{2}', '1.4142', False), ('\\sqrt{2}', '1.41', False), ('\\pi/2', '\\frac{\\pi}{2}', True),
    ('2\\pi', '6.2832', False), ('2\\pi', '\\pi', False), ('288 \\pi', '288\\pi', True), ('\\pi r^2', 'r^2\\pi', True),
    ('e^2', 'e^{2}', True), ('e', '2.71828', False), ('\\ln e', '1', True), ('\\log_2 8', '3', True),
    ('\\sin \\frac{\\pi}{6}', '0.5', True), ('\\cos 0', '1', True), ('\\cot x', '\\frac{\\cos x}{\\sin x}', True),
    ('\\tan x', '\\frac{\\cos x}{\\sin x}', False), ('5!', '120', True), ('\\binom{5}{2}', '10', True),
    ('\\dbinom{6}{3}', '20', True), ('\\binom{5}{2}', '12', False), ('\\sqrt{51}', '\\sqrt{51}', True),
    ('\\sqrt{51}', '\\sqrt{52}', False), ('√2', '\\sqrt{2}', True), ('π', '\\pi', True),
    # complex numbers
    ('6 - 5i', '6-5i', True), ('-5i+6', '6 - 5i', True), ('6+5i', '6-5i', False), ('i^2', '-1', False),
    ('1+274i', '274i+1', True),
    # symbolic expressions, implicit multiplication
    ('x^2+2x+1', '(x+1)^2', True), ('x^2+2x+1', '(x-1)^2', False), ('2k+2', '2(k+1)', True), ('2k', '2k+2', False),
    ('(a+5)(b+2)', 'ab+2a+5b+10', True), ('(a+5)(b+2)', '(a+2)(b+5)', False), ('p - q', '-(q-p)', True),
    ('6r^2-4r-24', '2(3r^2-2r-12)', True), ('\\frac{11+9a}{20}', '\\frac{11}{20}+\\frac{9a}{20}', True),
    ('3R^2', '3r^2', True), ('x^3+3x-6', 'x^3 + 3x - 6', True), ('15x - 80', '5(3x-16)', True),
    ('-13x+3', '3-13x', True), ('5r^5', '5 r^5', True), ('2xy', '2yx', True), ('x_1 + x_2', 'x_2+x_1', True),
    ('x_1', 'x_2', False), ('\\alpha + \\beta', '\\beta+\\alpha', True), ('\\sin^2 x + \\cos^2 x', '1', True),
    # x = ... and equations
    ('x = 5', '5', True), ('5', 'x=5', True), ('x=5', 'x = 6', False), ('y = 2x + 3', 'y=2x+3', True),
    ('y = 2x + 3', '2x - y + 3 = 0', True), ('y = 2x + 3', 'y = 3x + 2', False), ('2x+3', 'y = 2x + 3', True),
    ('y = -2x', '2x + y = 0', True), ('5x - 7y + 11z + 4 = 0', '-5x + 7y - 11z - 4 = 0', True),
    ('5x - 7y + 11z + 4 = 0', '10x - 14y + 22z + 8 = 0', True), ('5x - 7y + 11z + 4 = 0', '5x-7y+11z=0', False),
    ('f(x) = x^2', 'x^2', True), ('k = 3', '3', True),
    # tuples (ordered), points
    ('(1,2)', '(1, 2)', True), ('(2,1)', '(1,2)', False), ('(6,31,-1)', '(6, 31, -1)', True),
    ('(1,2,3)', '(1,2)', False), ('\\left( \\frac{3}{2}, -13 \\right)', '(1.5,-13)', True),
    ('(15,-29)', '(15,29)', False), ('(a, b) = (1, 2)', '(1,2)', True),
    # intervals
    ('(1, 2]', '(1,2]', True), ('(1,2)', '(1,2]', False), ('[1,2]', '[1,2)', False),
    ('(2,\\infty)', '(2, \\infty)', True), ('(-\\infty, 0]', '(-\\infty,0]', True),
    ('(-\\infty, 0)', '(-\\infty,0]', False), ('x > 2', '(2,\\infty)', True), ('x \\ge 2', '[2,\\infty)', True),
    ('x \\le 2', '(-\\infty, 2]', True), ('1 < x \\le 3', '(1,3]', True), ('x \\in [-2,7]', '[-2,7]', True),
    ('x \\in [-2,7]', '[-2,7)', False), ('(0,9) \\cup (9,36)', '(0,9)\\cup(9,36)', True),
    ('(9,36) \\cup (0,9)', '(0,9) \\cup (9,36)', True), ('(0,9) \\cup (9,36)', '(0,36)', False),
    ('\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]', '[\\pi^2/8, 5\\pi^2/4]', True),
    ('(-\\infty, 2) \\cup (3, \\infty)', '(-\\infty,2)\\cup(3,\\infty)', True), ('(3,4]', '(3, 4]', True),
    # sets and unordered lists
    ('\\{1,2\\}', '\\{2,1\\}', True), ('\\{1,2\\}', '\\{1,3\\}', False), ('\\{1,2\\}', '\\{1,2,3\\}', False),
    ('1,-2', '-2, 1', True), ('3, 5, 7', '7,5,3', True), ('3, 5, 7', '3, 5', False), ('2, 1', '\\{1, 2\\}', True),
    ('x = 1, x = 2', '1, 2', True), ('x=1 \\text{ or } x=2', '1,2', True), ('1 and 2', '1, 2', True),
    ('1 \\pm \\sqrt{19}', '1+\\sqrt{19}, 1-\\sqrt{19}', True), ('1 \\pm \\sqrt{19}', '1+\\sqrt{19}', False),
    ('3 \\pm 2 \\sqrt{2}', '3-2\\sqrt2, 3+2\\sqrt2', True),
    ('\\{1\\pm\\sqrt{5},-2\\}', '-2, 1+\\sqrt5, 1-\\sqrt5', True), ('\\emptyset', '\\varnothing', True),
    ('\\emptyset', '\\{\\}', True), ('\\emptyset', '\\{0\\}', False),
    # matrices and vectors
    ('\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}', '\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}', True),
    ('\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}', '\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}', False),
    ('\\begin{pmatrix} -1/3 \\\\ 2/3 \\\\ 5/3 \\end{pmatrix}',
     '\\begin{pmatrix} -\\frac13 \\\\ \\frac23 \\\\ \\frac53 \\end{pmatrix}', True),
    ('\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}', '(1,2)', False),
    ('\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}', '(2,1)', False),
    ('\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}', '\\begin{pmatrix}-1&0\\\\0&-1\\end{pmatrix}', True),
    ('\\begin{pmatrix} 1 & 2 \\end{pmatrix}', '\\begin{pmatrix} 1 & 2 & 3 \\end{pmatrix}', False),
    # multiple choice
    ('(C)', 'C', True), ('C', '(C)', True), ('\\text{(C)}', 'C', True), ('C)', '\\text{(C)}', False),
    ('(B)', '(C)', False), ('\\textbf{(E)}', 'E', True), ('(c)', '(C)', True), ('D', '\\text{(C)}', False),
    # words
    ('\\text{Evelyn}', 'Evelyn', True), ('evelyn', '\\text{Evelyn}', True), ('\\text{east}', 'east', True),
    ('west', '\\text{east}', False), ('\\text{even}', 'even', True), ('odd', '\\text{even}', False),
    ('\\text{ellipse}', 'ellipse', True),
    # infinity and base subscripts
    ('\\infty', '\\infty', True), ('-\\infty', '\\infty', False), ('∞', '\\infty', True), ('52_8', '52_{8}', True),
    ('42', '52_8', False), ('4210_{5}', '4210_5', True),
    # garbage and empties
    ('', '5', False), ('5', '', False), ('\\frac{1}{', '0.5', False), ('x++', 'x', False), ('None', '0', False),
    ("__import__('os')", '0', False), ('(1,2', '(1,2)', False),
]
