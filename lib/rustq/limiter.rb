# frozen_string_literal: true

require "securerandom"

module Rustq
  # A limiter inside a job was over its limit. Raised out of a job, it is no failure: the engine
  # schedules the job again (when the limiter may have room, else with a growing backoff), up to
  # 20 times in a row; then it fails like any error.
  class OverLimit < Error
    # The limiter, and the seconds until it may have room (nil when it cannot say).
    attr_reader :limiter, :retry_in

    def initialize(limiter, retry_in = nil)
      @limiter = limiter
      @retry_in = retry_in
      super("limiter #{limiter.name.inspect} is over its limit (#{limiter.describe})")
    end
  end

  # Limiters for code inside a job, in Sidekiq Enterprise's shape:
  #
  #   ERP = Rustq::Limiter.concurrent("erp", 50, wait_timeout: 5, lock_timeout: 30)
  #   STRIPE = Rustq::Limiter.bucket("stripe", 30, :second)    # 30 per calendar second
  #   MAIL = Rustq::Limiter.window("mail", 100, :minute)      # 100 in any 60 s
  #   ERP.within_limit { erp.call }
  #
  # `within_limit` waits up to `wait_timeout` seconds for room, then raises Rustq::OverLimit.
  # A concurrent limiter's slot taken in a rustq-worker belongs to that process: given back when
  # the block ends, freed by the engine should the process die — never because time went by (a
  # long call keeps its slot). Outside a worker (a console, a rake task) it lasts at most
  # `lock_timeout` seconds. The Redis side: rustq_core's `limiter` module.
  module Limiter
    PERIODS = {second: 1, minute: 60, hour: 3600, day: 86_400}.freeze

    class << self
      # The worker process's identity, set by rustq-worker (nil elsewhere).
      attr_accessor :identity

      def concurrent(name, limit, wait_timeout: 5, lock_timeout: 30, **_options)
        Concurrent.new(name, limit, wait_timeout: wait_timeout, lock_timeout: lock_timeout)
      end

      def bucket(name, limit, interval, wait_timeout: 5, **_options)
        Bucket.new(name, limit, interval, wait_timeout: wait_timeout)
      end

      def window(name, limit, interval, wait_timeout: 5, **_options)
        Window.new(name, limit, interval, wait_timeout: wait_timeout)
      end

      # Seconds of an interval given as :second/:minute/:hour/:day or a number.
      def seconds(interval)
        value = interval.is_a?(Symbol) || interval.is_a?(String) ? PERIODS[interval.to_sym] : interval
        value = value.to_f if value.respond_to?(:to_f) && !value.is_a?(String)
        raise ArgumentError, "limiter interval must be :second, :minute, :hour, :day or a number of seconds above 0, got #{interval.inspect}" unless value.is_a?(Float) && value.positive? && value.finite?

        value
      end
    end

    # What every limiter checks of its arguments.
    class Base
      attr_reader :name, :limit, :wait_timeout

      def initialize(name, limit, wait_timeout:)
        raise ArgumentError, "limiter name must be a non-empty String, got #{name.inspect}" unless name.is_a?(String) && !name.empty?
        raise ArgumentError, "limiter #{name.inspect}: limit must be an Integer of at least 1, got #{limit.inspect}" unless limit.is_a?(Integer) && limit >= 1

        @name = name
        @limit = limit
        @wait_timeout = wait_timeout.to_f
      end

      private

      def now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    # At most `limit` blocks at once, fleet-wide.
    class Concurrent < Base
      def initialize(name, limit, wait_timeout:, lock_timeout:)
        super(name, limit, wait_timeout: wait_timeout)
        @lock_timeout_ms = (lock_timeout.to_f * 1000).ceil
      end

      def describe = "#{limit} at once"

      def within_limit
        token = SecureRandom.hex(12)
        holder = Limiter.identity
        deadline = now + wait_timeout
        pause = 0.01
        until Native.limiter_acquire(name, limit, token, holder, @lock_timeout_ms)
          left = deadline - now
          raise OverLimit.new(self) if left <= 0

          sleep([pause, left].min)
          pause = [pause * 2, 0.25].min
        end
        begin
          yield
        ensure
          Native.limiter_release(name, token, holder)
        end
      end
    end

    # At most `limit` per interval, intervals aligned to the clock (each calendar second, minute…).
    class Bucket < Base
      def initialize(name, limit, interval, wait_timeout:)
        super(name, limit, wait_timeout: wait_timeout)
        @period_ms = (Limiter.seconds(interval) * 1000).round
      end

      def describe = "#{limit} per #{@period_ms / 1000.0} s"

      def within_limit
        deadline = now + wait_timeout
        while (wait_ms = take)
          raise OverLimit.new(self, wait_ms / 1000.0) if now + wait_ms / 1000.0 > deadline

          sleep(wait_ms / 1000.0)
        end
        yield
      end

      private

      def take = Native.limiter_bucket(name, limit, @period_ms)
    end

    # At most `limit` in any sliding interval.
    class Window < Bucket
      def describe = "#{limit} in any #{@period_ms / 1000.0} s"

      private

      def take = Native.limiter_window(name, limit, @period_ms, SecureRandom.hex(12))
    end
  end
end
