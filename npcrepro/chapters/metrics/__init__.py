"""The metrics page: two raters' real organ contours scored with every metric of the book."""
