# frozen_string_literal: true

module Rustq
  VERSION = "0.1.0"
end
