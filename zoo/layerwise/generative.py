"""The hierarchical generative model of paper 003 (Sec. 3.1) and its synthetic digits (Sec. 3.2).

An example is drawn level by level: a label y (uniform), a semantic image X(0) over the classes C0
drawn from D_y (here: uniform over a finite set of semantic images per label), then for every
level i each pixel of class c in X(i) is replaced by an s_i x s_i patch drawn uniformly from its
set S_c (the sets of one level are disjoint, each of size k_i), which gives X(i + 1); the last
level's patches are real-valued, so X(d) is the observed image. The label enters only through
X(0): `sample` draws (y, X(0)) from one random stream and refines X(0) with another
(`refine(X(0), seed)` reproduces the images of `sample(n, seed)`).

`HierarchicalModel` holds the tables (any depth, patch size and set size per level, any number
of channels) and samples arrays (`sample`) or a tf.data source (`dataset`); it also gives the
paper's "labeled frequency" maps F_c = E[y I_c(X(i))] exactly (`labeled_frequency`), and the
separation constants of Sec. 3.1 (`separation`: the smallest angle theta between two F_c and the
smallest norm xi). `random_model` draws a model with disjoint random sets (orthonormal last-level
patches for the two-level analysis of Sec. 4); `synthetic_digits` is our reconstruction of the
Sec. 3.2 example (its choices are documented at `synthetic_digits`).
"""
import dataclasses
import itertools

import numpy as np

from kernelzoo.ops.checks import check_choice, nonnegative_int, positive_int, positive_ints


@dataclasses.dataclass(frozen=True)
class Sample:
    """Examples of a HierarchicalModel.

    images: float32 (n, H, W, channels), the observed X(d); labels: int64 (n,);
    latents: [X(0), ..., X(d-1)], int64 class maps (n, h_i, w_i) of every semantic level;
    choices: per semantic level, the index (0..k_i - 1) of the patch each pixel of X(i) drew from its set.
    """

    images: np.ndarray
    labels: np.ndarray
    latents: tuple
    choices: tuple

    def patch_ids(self, level, set_size):
        """The identity of the patch every pixel of X(level) generated: class * k + choice, unique
        over the level (the sets are disjoint), shape (n, h_level, w_level)."""
        return self.latents[level] * set_size + self.choices[level]


@dataclasses.dataclass(frozen=True, eq=False)
class HierarchicalModel:
    """The generative model's tables (module docstring).

    semantic: per label, an int array (count_y, h0, w0) of C0 classes; D_y is uniform over it.
    rules: per semantic level i = 0..d-2, an int array (|C_i|, k_i, s_i, s_i): rules[i][c] is the set
      S_c of class c's patches over C_{i+1}.
    pixels: float array (|C_{d-1}|, k, s, s, channels): the real-valued patch sets of the last level.
    label_names, class_names (one tuple of names per semantic level): optional, for plots.
    """

    semantic: tuple
    rules: tuple
    pixels: np.ndarray
    label_names: tuple = None
    class_names: tuple = None

    def __post_init__(self):
        semantic = tuple(np.asarray(s, dtype=np.int64) for s in self.semantic)
        rules = tuple(np.asarray(r, dtype=np.int64) for r in self.rules)
        pixels = np.asarray(self.pixels, dtype=np.float32)
        if pixels.ndim == 4:
            pixels = pixels[..., None]
        object.__setattr__(self, "semantic", semantic)
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "pixels", pixels)
        if len(semantic) < 2 or any(s.ndim != 3 or not len(s) for s in semantic):
            raise ValueError("`semantic` must hold, for each of at least 2 labels, a non-empty array (count, h0, w0)")
        if len({s.shape[1:] for s in semantic}) != 1:
            raise ValueError(f"`semantic` images must share one shape, got {[s.shape[1:] for s in semantic]}")
        if pixels.ndim != 5 or pixels.shape[2] != pixels.shape[3]:
            raise ValueError(f"`pixels` must be (classes, k, s, s[, channels]), got shape {pixels.shape}")
        sizes = [r.shape[0] for r in rules] + [pixels.shape[0]]
        for level, rule in enumerate(rules):
            if rule.ndim != 4 or rule.shape[2] != rule.shape[3]:
                raise ValueError(f"`rules[{level}]` must be (classes, k, s, s), got shape {rule.shape}")
            if rule.min() < 0 or rule.max() >= sizes[level + 1]:
                raise ValueError(f"`rules[{level}]` must hold classes of level {level + 1} (0..{sizes[level + 1] - 1})")
            _check_disjoint(rule.reshape(rule.shape[0] * rule.shape[1], -1), f"rules[{level}]")
        _check_disjoint(pixels.reshape(pixels.shape[0] * pixels.shape[1], -1), "pixels")
        for label, images in enumerate(semantic):
            if images.min() < 0 or images.max() >= sizes[0]:
                raise ValueError(f"`semantic[{label}]` must hold classes of level 0 (0..{sizes[0] - 1})")
        if self.label_names is not None and len(self.label_names) != len(semantic):
            raise ValueError(f"`label_names` must name the {len(semantic)} labels, got {self.label_names!r}")
        if self.class_names is not None and (len(self.class_names) != self.depth
                                             or any(len(n) != s for n, s in zip(self.class_names, sizes))):
            raise ValueError(f"`class_names` must name the classes of each of the {self.depth} semantic levels "
                             f"(sizes {sizes})")

    # ------------------------------------------------------------------ shape of the model

    @property
    def depth(self):
        """d: the number of refinement steps (semantic levels X(0)..X(d-1), then the image X(d))."""
        return len(self.rules) + 1

    @property
    def num_labels(self):
        return len(self.semantic)

    @property
    def num_classes(self):
        """(|C_0|, ..., |C_{d-1}|)."""
        return tuple(r.shape[0] for r in self.rules) + (self.pixels.shape[0],)

    @property
    def patch_sizes(self):
        """(s_0, ..., s_{d-1}): level i's pixels become s_i x s_i patches."""
        return tuple(r.shape[2] for r in self.rules) + (self.pixels.shape[2],)

    @property
    def set_sizes(self):
        """(k_0, ..., k_{d-1}): the size of every set S_c of level i."""
        return tuple(r.shape[1] for r in self.rules) + (self.pixels.shape[1],)

    @property
    def semantic_shape(self):
        return tuple(self.semantic[0].shape[1:])

    def level_shape(self, level):
        """(h, w) of X(level), level 0..d."""
        scale = int(np.prod(self.patch_sizes[:level]))
        return tuple(side * scale for side in self.semantic_shape)

    @property
    def image_shape(self):
        """(H, W, channels) of the observed image X(d)."""
        return self.level_shape(self.depth) + (self.pixels.shape[-1],)

    # ------------------------------------------------------------------ sampling

    def draw_semantic(self, count, seed=0):
        """(labels (count,), X(0) (count, h0, w0)): y uniform, then X(0) uniform in the support of D_y."""
        rng = _rng(seed, 0)
        count = positive_int(count, "count")
        labels = rng.integers(self.num_labels, size=count)
        picks = [rng.integers(len(self.semantic[y])) for y in labels]
        return labels.astype(np.int64), np.stack([self.semantic[y][p] for y, p in zip(labels, picks)])

    def refine(self, semantic, seed=0):
        """X(1), ..., X(d) from X(0) (n, h0, w0), without the label: (images, latents, choices) as in Sample."""
        rng = _rng(seed, 1)
        current = np.asarray(semantic, dtype=np.int64)
        latents, choices = [], []
        for level in range(self.depth):
            latents.append(current)
            table = self.rules[level] if level < len(self.rules) else self.pixels
            choice = rng.integers(table.shape[1], size=current.shape)
            choices.append(choice)
            patches = table[current, choice]  # (n, h, w, s, s[, C])
            n, h, w, s = patches.shape[:4]
            order = (0, 1, 3, 2, 4) + tuple(range(5, patches.ndim))
            current = patches.transpose(order).reshape((n, h * s, w * s) + patches.shape[5:])
        return current.astype(np.float32), tuple(latents), tuple(choices)

    def sample(self, count, seed=0):
        """`count` examples as arrays (a Sample); the same seed gives the same examples."""
        labels, semantic = self.draw_semantic(count, seed)
        images, latents, choices = self.refine(semantic, seed)
        return Sample(images, labels, latents, choices)

    def dataset(self, batch_size=64, seed=0, batches=None, dtype="uint8"):
        """A tf.data.Dataset of (images, labels) batches, batch b drawn with seed (seed, b): the same
        stream every time; endless unless `batches` is given. dtype "uint8" gives 0-255 pixels
        (`to_uint8`, for models that take raw pixels), "float32" the real-valued images."""
        import tensorflow as tf

        batch_size = positive_int(batch_size, "batch_size")
        dtype = check_choice("dtype", dtype, ("uint8", "float32"))
        batches = None if batches is None else positive_int(batches, "batches")

        def generate():
            for index in itertools.count() if batches is None else range(batches):
                drawn = self.sample(batch_size, seed=(int(seed), index))
                yield (to_uint8(drawn.images) if dtype == "uint8" else drawn.images), drawn.labels

        signature = (tf.TensorSpec((batch_size,) + self.image_shape, dtype), tf.TensorSpec((batch_size,), tf.int64))
        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        if batches is not None:
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
        return dataset

    # ------------------------------------------------------------------ the quantities of the analysis

    def label_signs(self):
        """y in {-1, +1} for the paper's binary labels: label 0 -> -1, label 1 -> +1."""
        if self.num_labels != 2:
            raise ValueError(f"the analysis is for binary labels; this model has {self.num_labels}")
        return np.array([-1.0, 1.0])

    def labeled_frequency(self, level):
        """F_c = E[y I_c(X(level))] for every class c of the semantic level: (|C_level|, h, w), exact.

        Level 0 from the finite supports of D_y; each next level by refining the signed class maps:
        a pixel of class c' puts class c at offset (a, b) of its patch with probability
        #{j : S_c'[j][a, b] = c} / k.
        """
        level = nonnegative_int(level, "level")
        if level >= self.depth:
            raise ValueError(f"`level` must be a semantic level 0..{self.depth - 1}, got {level}")
        signs = self.label_signs()
        classes = self.num_classes[0]
        frequency = sum(signs[y] / self.num_labels * np.eye(classes)[self.semantic[y]].mean(axis=0)
                        for y in range(self.num_labels))  # (h0, w0, C0)
        for rule, below in zip(self.rules[:level], self.num_classes[1:]):
            mix = np.eye(below)[rule].mean(axis=1)  # (C_i, s, s, C_{i+1}): class frequencies at each offset
            refined = np.einsum("hwc,cabd->hawbd", frequency, mix)
            h, s, w = refined.shape[:3]
            frequency = refined.reshape(h * s, w * s, below)
        return np.moveaxis(frequency, -1, 0)

    def separation(self, level):
        """(theta, xi) of Sec. 3.1 at one level: the smallest angle between two labeled frequency maps
        and the smallest Frobenius norm of one (both > 0 under the paper's assumption)."""
        flat = self.labeled_frequency(level).reshape(self.num_classes[level], -1)
        norms = np.linalg.norm(flat, axis=1)
        cosines = (flat @ flat.T) / np.maximum(np.outer(norms, norms), 1e-30)
        off = cosines[~np.eye(len(flat), dtype=bool)]
        return float(np.arccos(np.clip(off.max(), -1.0, 1.0))), float(norms.min())


def to_uint8(images):
    """Real-valued images in [0, 1] as 0-255 pixels (rounded, clipped), the form zoo models take."""
    return np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _rng(seed, stream):
    """The generator of one random stream of a seed (an int or a tuple of ints)."""
    seed = list(seed) if isinstance(seed, (tuple, list)) else [seed]
    return np.random.default_rng([int(s) for s in seed] + [stream])


def _check_disjoint(rows, name):
    if len(np.unique(rows, axis=0)) != len(rows):
        raise ValueError(f"`{name}`: the patch sets must be disjoint and each patch distinct within its set")


# ----------------------------------------------------------------------------- random models


PIXELS = ("orthonormal", "uniform", "binary")


def random_model(num_classes=(4, 4), patch_sizes=2, set_sizes=2, semantic_shape=(3, 3), templates=4, num_labels=2,
                 channels=1, pixels="uniform", seed=0):
    """A model with random disjoint sets: d = len(num_classes) levels (|C_0|, ..., |C_{d-1}|).

    patch_sizes, set_sizes: one value or one per level; templates: semantic images per label (all
    distinct); pixels: the last level's patches, "orthonormal" (the patch orthonormality of Sec. 4:
    needs s^2 * channels >= |C_{d-1}| k), "uniform" in [0, 1) or "binary" {0, 1}.
    """
    num_classes = positive_ints(num_classes, "num_classes")
    depth = len(num_classes)
    patch_sizes = _per_level(patch_sizes, depth, "patch_sizes")
    set_sizes = _per_level(set_sizes, depth, "set_sizes")
    semantic_shape = positive_ints(semantic_shape, "semantic_shape")
    pixels = check_choice("pixels", pixels, PIXELS)
    templates, num_labels = positive_int(templates, "templates"), int(num_labels)
    if num_labels < 2:
        raise ValueError(f"`num_labels` must be at least 2, got {num_labels}")
    rng = np.random.default_rng(seed)
    semantic = _distinct(rng, num_classes[0], int(np.prod(semantic_shape)), templates * num_labels, "semantic images")
    semantic = semantic.reshape((num_labels, templates) + tuple(semantic_shape))
    rules = []
    for level in range(depth - 1):
        s, k = patch_sizes[level], set_sizes[level]
        rows = _distinct(rng, num_classes[level + 1], s * s, num_classes[level] * k, f"patches of level {level}")
        rules.append(rows.reshape(num_classes[level], k, s, s))
    s, k, count = patch_sizes[-1], set_sizes[-1], num_classes[-1] * set_sizes[-1]
    dims = s * s * positive_int(channels, "channels")
    if pixels == "orthonormal":
        if dims < count:
            raise ValueError(f"orthonormal pixel patches need s^2 * channels = {dims} >= |C_{depth - 1}| k = {count}")
        rows = np.linalg.qr(rng.normal(size=(dims, count)))[0].T
    elif pixels == "binary":
        rows = _distinct(rng, 2, dims, count, "pixel patches").astype(np.float32)
    else:
        rows = rng.random((count, dims))
    return HierarchicalModel(tuple(semantic), tuple(rules), rows.reshape(num_classes[-1], k, s, s, -1))


def _per_level(value, depth, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * depth
    value = positive_ints(value, name)
    if len(value) != depth:
        raise ValueError(f"`{name}` must be one value or {depth} (one per level), got {value!r}")
    return value


def _distinct(rng, base, length, count, what):
    """`count` distinct random rows of `length` digits in 0..base-1."""
    if base ** length < count:
        raise ValueError(f"only {base}^{length} different {what} exist, {count} needed")
    rows = np.empty((0, length), np.int64)
    while len(rows) < count:
        rows = np.unique(np.concatenate([rows, rng.integers(base, size=(2 * count, length))]), axis=0)
    return rows[rng.permutation(len(rows))[:count]]


# ----------------------------------------------------------------------------- Sec. 3.2: synthetic digits


# Level 0 (C0, 9 classes, as the paper's 9 glyphs): line pieces drawn through the centre of a cell,
# leaving it on the sides named: "─" left-right, "│" up-down, the four corners and the two T-junctions.
GLYPHS = (" ", "─", "│", "┌", "┐", "└", "┘", "├", "┤")
_EXITS = {" ": "", "─": "LR", "│": "UD", "┌": "RD", "┐": "LD",
          "└": "UR", "┘": "UL", "├": "UDR", "┤": "UDL"}
# Level 1 (C1, 6 classes, as the paper's 6): background, horizontal and vertical strokes, the two
# diagonals (rounded corners) and a dot (sharp corners, junctions, knots and specks of dust).
STROKES = (" ", "─", "│", "╱", "╲", "•")
# Digits on a 5 x 3 grid of glyphs (a seven-segment-like font).
DIGITS = (
    ("┌─┐", "│ │", "│ │", "│ │", "└─┘"),
    ("─┐ ", " │ ", " │ ", " │ ", " │ "),
    ("──┐", "  │", "┌─┘", "│  ", "└──"),
    ("──┐", "  │", "──┤", "  │", "──┘"),
    ("│ │", "└─┤", "  │", "  │", "  │"),
    ("┌──", "│  ", "└─┐", "  │", "──┘"),
    ("┌──", "│  ", "├─┐", "│ │", "└─┘"),
    ("──┐", "  │", "  │", "  │", "  │"),
    ("┌─┐", "│ │", "├─┤", "│ │", "└─┘"),
    ("┌─┐", "│ │", "└─┤", "  │", "──┘"),
)
_ROUNDED = {"┌": "╱", "┐": "╲", "└": "╲", "┘": "╱", "├": "│",
            "┤": "│", "─": "•", "│": "•", " ": " "}


def _glyph_patches(glyph):
    """The four 3 x 3 manifestations of a C0 glyph over C1 (Sec. 3.2: "four possible manifestations")."""
    exits = _EXITS[glyph]
    base = np.full((3, 3), " ", dtype=object)
    for side, (row, col), stroke in (("U", (0, 1), "│"), ("D", (2, 1), "│"),
                                     ("L", (1, 0), "─"), ("R", (1, 2), "─")):
        if side in exits:
            base[row, col] = stroke
    base[1, 1] = {"": " ", "LR": "─", "UD": "│"}.get(exits, "•")
    alternative = base.copy()
    alternative[1, 1] = _ROUNDED[glyph]      # a knot on a straight line, a rounded corner, a straight junction
    if not exits:
        alternative[0, 2] = "•"              # blank: a speck of dust (never in the centre: see synthetic_digits)
    dusty, dusty_alternative = base.copy(), alternative.copy()
    dusty[0, 0] = "•"                        # a speck of dust in a free corner cell
    dusty_alternative[2, 2] = "•"
    return [[[STROKES.index(symbol) for symbol in row] for row in patch]
            for patch in (base, alternative, dusty, dusty_alternative)]


def _texture_patches():
    """Four 4 x 4 binary textures per C1 class, each pixel on in exactly two of the four (two
    complementary pairs): the mean of every class is the flat 0.5 patch."""
    i, j = np.mgrid[0:4, 0:4]
    pairs = {
        " ": ((i + j) % 2 == 0, (i + j // 2) % 2 == 0),          # checkerboard, bricks
        "─": (i % 2 == 0, (i // 2) % 2 == 0),                    # horizontal stripes, two widths
        "│": (j % 2 == 0, (j // 2) % 2 == 0),                    # vertical stripes
        "╱": (np.isin((i + j) % 4, (0, 1)), np.isin((i + j) % 4, (1, 2))),   # rising diagonal stripes
        "╲": (np.isin((i - j) % 4, (0, 1)), np.isin((i - j) % 4, (1, 2))),   # falling diagonal stripes
        "•": ((i == j) | (i + j == 3), (i // 2 + j // 2) % 2 == 0),          # a cross, 2 x 2 blocks
    }
    return np.stack([np.stack([a, ~a, b, ~b]) for a, b in (pairs[s] for s in STROKES)]).astype(np.float32)


def synthetic_digits():
    """Our reconstruction of the Sec. 3.2 example (the glyphs of the paper's figure are lost in the text).

    Three levels, as the paper: X(0) in C0^(5 x 3) -> X(1) in C1^(15 x 9) -> X(2) in R^(60 x 36).
    - C0 (9 classes, as the paper's 9 glyphs): `GLYPHS`, line pieces through a cell's centre (blank,
      horizontal, vertical, four corners, two T-junctions); a digit is a 5 x 3 glyph image (`DIGITS`,
      a seven-segment-like font). Labels even / odd (D_even, D_odd uniform over {0,2,4,6,8}, {1,3,5,7,9}).
    - C1 (6 classes, as the paper's 6): `STROKES`, background, "─", "│", "╱", "╲" and a dot "•". Each
      glyph has four 3 x 3 manifestations: the plain drawing (strokes through the centre, a dot where
      strokes meet at an angle), an alternative centre (a knot on a straight line, a rounded corner
      drawn with a diagonal, a junction drawn straight, a speck on a blank cell), and each of these
      with a speck of dust in a free corner cell.
    - Pixels (4 x 4 per C1 pixel): four binary textures per stroke class (stripes along the stroke,
      checkerboard / bricks for the background, a cross / blocks for the dot), chosen so that each
      pixel is on in exactly two of a class's four textures. So E[X | X(1)] is the flat 0.5 image
      whatever X(1) is, and E[X | y] is the same for both labels: a linear classifier on raw pixels
      has no mean difference to use (the point of the model: the digit is only visible through the
      co-occurrence of pixels, i.e. in patches), while the patch structure is plain to the eye.
    With k = 4 at both levels this gives 4^15 level-1 and 4^(15 + 135) pixel-level variants of each
    digit (the paper counts 4^9 and 4^90 for its own, smaller, layout).
    """
    rules = np.array([_glyph_patches(glyph) for glyph in GLYPHS], dtype=np.int64)
    semantic = np.array([[[GLYPHS.index(symbol) for symbol in row] for row in digit] for digit in DIGITS])
    return HierarchicalModel(semantic=(semantic[0::2], semantic[1::2]), rules=(rules,), pixels=_texture_patches(),
                             label_names=("even", "odd"), class_names=(GLYPHS, STROKES))
