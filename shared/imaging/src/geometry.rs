//! The sizes the models' image processors resize to — the one place that computes them, for the
//! CPU stage's resize and for the model runtime's own preprocessing alike.

/// The size after resizing the shortest side to `size`, as `transformers`'
/// `get_resize_output_image_size(default_to_square=False)` computes it: the long side becomes
/// `int(size * long / short)`. `(width, height)` in, `(width, height)` out; a zero side counts
/// as 1, so nothing divides by zero.
pub fn shortest_edge_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let (short, long) = if width <= height { (width, height) } else { (height, width) };
    let long = ((u64::from(size) * u64::from(long)) / u64::from(short.max(1))).max(u64::from(size));
    let long = u32::try_from(long).unwrap_or(u32::MAX);
    if width <= height { (size, long) } else { (long, size) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_follows_transformers() {
        assert_eq!(shortest_edge_size(4000, 3000, 224), (298, 224));
        assert_eq!(shortest_edge_size(1080, 1920, 224), (224, 398));
        assert_eq!(shortest_edge_size(100, 100, 224), (224, 224));
        assert_eq!(shortest_edge_size(225, 224, 224), (225, 224));
        assert_eq!(shortest_edge_size(200, 300, 224), (224, 336));
        assert_eq!(shortest_edge_size(300, 200, 224), (336, 224));
        assert_eq!(shortest_edge_size(69, 95, 32), (32, 44)); // int(32 * 95 / 69) = 44
    }

    #[test]
    fn a_zero_side_does_not_divide_by_zero() {
        assert_eq!(shortest_edge_size(0, 10, 32), (32, 320));
        assert_eq!(shortest_edge_size(0, 0, 32), (32, 32));
    }
}
